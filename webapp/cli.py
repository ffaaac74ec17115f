"""Command-line commands: ``flask --app wsgi ...``, and the database check they share."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import ScriptInfo
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .database import (
    Contention,
    error_kind,
    schema_revisions,
    schema_versions,
    unreachable_advice,
)
from .extensions import db

UPGRADE = "flask --app wsgi db upgrade"
AGAIN = "Run it again once the database answers."


def database_problem() -> str | None:
    """Why the app's database cannot serve a command (unreachable, no schema, another
    version's schema), for an operator; None when it can."""
    where = db.engine.url.render_as_string(hide_password=True)
    try:
        with db.engine.connect() as conn:
            # Read directly: alembic's MigrationContext would log two INFO lines per command.
            found = schema_versions(conn)
    except DBAPIError as exc:
        # The driver's own reason (refused, unknown database, access denied), without SQL.
        return (
            f"could not reach the database {where}: {exc.orig}\n"
            f"{unreachable_advice(db.engine)} A new database also needs its schema: {UPGRADE}"
        )
    wanted, known = schema_revisions()
    if not found:
        return f"the database {where} has no schema yet; create it with: {UPGRADE}"
    if found == wanted:
        return None
    shown = ", ".join(sorted(found))
    if not found & known:
        return (
            f"the database {where} has schema revision {shown}, which this version does not "
            "know (a newer version made it?)"
        )
    return (
        f"the database {where} has schema revision {shown}, this version needs "
        f"{', '.join(sorted(wanted))}; bring it up to date with: {UPGRADE}"
    )


class DatabaseCommand(click.Command):
    """A command that uses the database: a clear error, not a driver's traceback, when the
    database cannot be reached or has not been given this version's schema."""

    def invoke(self, ctx: click.Context):
        if not current_app:
            app = ctx.ensure_object(ScriptInfo).load_app()
            ctx.with_resource(app.app_context())
        problem = database_problem()
        if problem is not None:
            raise click.ClickException(problem)
        try:
            return super().invoke(ctx)
        except Contention as exc:
            raise click.ClickException(
                f"the database stayed locked by another writer ({exc}); "
                f"what the command had saved before stays. {AGAIN}"
            ) from exc
        except (OperationalError, InterfaceError) as exc:
            # The server went away, the disk failed, a lock wait ran out...: a real failure,
            # but the operator needs its kind and what to do, not the driver's traceback.
            raise click.ClickException(
                f"the database failed during the command ({error_kind(exc)}); "
                f"what the command had saved before stays. {AGAIN}"
            ) from exc


class DatabaseGroup(click.Group):
    """A command group whose commands are all DatabaseCommands."""

    command_class = DatabaseCommand


def register_cli(app: Flask) -> None:
    """Attach the project's command groups to the app."""
    from .auth.cli import users
    from .dashboard.cli import search

    app.cli.add_command(users)
    app.cli.add_command(search)

    from .vouchers.cli import vouchers

    app.cli.add_command(vouchers)

    from .reconcile.cli import reconcile_command

    app.cli.add_command(reconcile_command)
