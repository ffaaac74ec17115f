import fcntl
import logging
import os
from contextlib import contextmanager, suppress
from logging.config import fileConfig

import click
from alembic import context
from flask import current_app
from sqlalchemy.exc import DBAPIError

from webapp.database import SQLITE_IMMEDIATE, unreachable_advice

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging.
# This line sets up loggers basically.
fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")


def get_engine():
    return current_app.extensions["migrate"].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(get_engine().url).replace("%", "%%")


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=get_metadata(), literal_binds=True)

    with context.begin_transaction():
        context.run_migrations()


# Seconds between two looks at the lock another upgrade holds.
_LOCK_WAIT_S = 5


_WAITING = "another db upgrade or downgrade is running on this database; waiting for it to finish"


@contextmanager
def _file_lock(path: str):
    """Hold an exclusive ``flock`` on ``path`` (made if missing), waiting for whoever holds it."""
    try:
        # Read-only: a file an upgrade run by another user made still takes a lock.
        lock = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise click.ClickException(
            f"could not open the upgrade lock {path}: {exc.strerror}. SQLite needs this "
            "user to be able to write to the database's folder (its -wal and -shm files "
            "are kept there too)."
        ) from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(_WAITING)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # lets go of the lock


@contextmanager
def one_upgrade_at_a_time(connection):
    """Hold the database's migration lock while migrating; wait for whoever holds it.

    On MySQL/MariaDB nothing else stopped two ``db upgrade`` run at the same moment
    (a deploy that runs it on every box): both read the same version and ran the
    same migrations, and one failed with a traceback in the middle ("Table already
    exists", a duplicate index), having run part of a migration the other ran whole;
    a data migration that is not idempotent would have been applied twice. The lock
    is the server's named lock for this database (``GET_LOCK``); it belongs to this
    connection, so an upgrade that dies lets go of it. The second upgrade waits,
    then reads the version the first left and has nothing to do.

    On SQLite the lock is a file's beside the database (``<file>-upgrade-lock``,
    ``flock``), let go of when the upgrade ends or dies. SQLite's write lock alone
    did not do it: alembic commits each migration on its own, and a second upgrade
    that read the version between two of them ran the next one again, and one of
    the two failed half-way ("table engagement already exists"; 2 of 8 tries on an
    empty database).
    """
    if connection.dialect.name == "sqlite":
        with _file_lock(f"{connection.engine.url.database}-upgrade-lock"):
            yield
        return
    if connection.dialect.name not in ("mysql", "mariadb"):
        yield
        return
    database = connection.exec_driver_sql("SELECT DATABASE()").scalar()
    # The server's lock names are at most 64 characters; a cut name only ever serialises more.
    name = f"identity db upgrade {database}"[:64]

    def take(wait_s: int):
        return connection.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, wait_s)).scalar()

    held = take(0)
    if held == 0:
        logger.info(_WAITING)
        while held == 0:
            held = take(_LOCK_WAIT_S)
    if held != 1:
        raise click.ClickException("the database refused its migration lock (GET_LOCK)")
    # The lock is the session's, not the transaction's: alembic must find no transaction
    # open, or it would take it for the caller's and never commit the version it writes.
    connection.commit()
    try:
        yield
    finally:
        # A connection the server dropped has let go of the lock already; its error is the one.
        with suppress(DBAPIError):
            connection.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (name,))
            connection.commit()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = current_app.extensions["migrate"].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    try:
        connection = connectable.connect()
    except DBAPIError as exc:
        # A wrong DATABASE_URL or a server that is down: one line naming the database
        # (without its password) and the driver's reason, as the service's own commands do.
        where = connectable.url.render_as_string(hide_password=True)
        raise click.ClickException(
            f"could not reach the database {where}: {exc.orig}\n{unreachable_advice(connectable)}"
        ) from None

    with connection, one_upgrade_at_a_time(connection):
        if connection.dialect.name == "sqlite":
            # Take the write lock before reading the version: a transaction that read
            # first fails at its first ALTER if a worker writes meanwhile ("database is
            # locked" at once, whatever the busy timeout).
            connection = connection.execution_options(**{SQLITE_IMMEDIATE: True})
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)

        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
