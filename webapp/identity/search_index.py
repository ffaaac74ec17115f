"""The search index: three-character pieces (grams) of every contact's e-mail and phone keys.

It lives with the identity core because every write that adds a contact row
(identify, agents' links) must index it in the same transaction; the
dashboard's search reads it (webapp/dashboard/search.py). Names kept against
a contact row (webapp/engagements) are indexed the same way, by their writers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import Connection, Integer, String, bindparam, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import MYSQL_TABLE_ARGS

GRAM = 3
NOT_DIGIT = re.compile(r"[^0-9]")


class ContactGram(db.Model):
    """One row per gram of a contact's keys, so that a search reads an index, not the table.

    ``gram`` is a kind letter ("e" e-mail, "p" phone digits, "n" a name kept
    against the row) and three characters. Rows are only ever added: a
    contact's keys never change, names are only ever added, and deleted
    contacts are filtered out when the search checks its candidates.
    """

    __tablename__ = "contact_gram"

    gram: Mapped[str] = mapped_column(String(4), primary_key=True)
    contact_id: Mapped[int] = mapped_column(Integer, primary_key=True)

    __table_args__ = ({**MYSQL_TABLE_ARGS, "sqlite_with_rowid": False},)


def grams(prefix: str, text: str | None) -> set[str]:
    """The grams of ``text``, each behind a kind letter."""
    if not text:
        return set()
    return {prefix + text[i : i + GRAM] for i in range(len(text) - GRAM + 1)}


def contact_grams(email_key: str | None, phone_key: str | None) -> set[str]:
    """The index entries of one contact row."""
    return grams("e", email_key) | grams("p", NOT_DIGIT.sub("", phone_key or ""))


def name_grams(name_key: str | None) -> set[str]:
    """The index entries of one name (its lower-cased key) kept against a contact row."""
    return grams("n", name_key)


def add_entries(conn: Connection, entries: Iterable[tuple[str, int]]) -> None:
    """Insert (gram, contact_id) index rows in one executemany, in the caller's transaction.

    A contact row has some thirty grams and identify adds one on every new
    value, so the rows go straight to the driver: SQLAlchemy's executemany
    would process each row's parameters on its own, which cost about a
    fifth of a new customer's request.
    """
    rows = sorted(entries)
    if not rows:
        return
    sql, positional = _insert_sql(conn.dialect)
    conn.exec_driver_sql(sql, rows if positional else [{"g": g, "c": c} for g, c in rows])


_INSERT_SQL: dict[tuple[str, str], tuple[str, bool]] = {}


def _insert_sql(dialect) -> tuple[str, bool]:
    """The dialect's INSERT of one (gram, contact_id) row, and whether it binds by position.

    Positional parameters are bound as ("g", "c"), named ones as g and c.
    """
    cache_key = (dialect.name, dialect.paramstyle)
    if cache_key not in _INSERT_SQL:
        statement = insert(ContactGram.__table__).values(
            gram=bindparam("g"), contact_id=bindparam("c")
        )
        compiled = statement.compile(dialect=dialect)
        if compiled.positional and list(compiled.positiontup or ()) != ["g", "c"]:
            raise RuntimeError(f"unexpected parameter order for {dialect.name}")
        _INSERT_SQL[cache_key] = (str(compiled), compiled.positional)
    return _INSERT_SQL[cache_key]


def index_contact(
    conn: Connection, contact_id: int, email_key: str | None, phone_key: str | None
) -> None:
    """Add a new contact row to the search index, in the caller's transaction."""
    add_entries(conn, ((gram, contact_id) for gram in contact_grams(email_key, phone_key)))


def index_names(conn: Connection, contact_id: int, name_keys: Iterable[str]) -> None:
    """Add names newly kept against a contact row to the search index, in the caller's transaction.

    A row's names often share grams ("Ann Lee", "Ann Leigh"), and each gram is
    one entry per row, so only the grams the row does not hold yet are added.
    """
    wanted = set().union(*(name_grams(key) for key in name_keys))
    if not wanted:
        return
    table = ContactGram.__table__
    held = set(
        conn.scalars(
            select(table.c.gram).where(
                table.c.contact_id == contact_id, table.c.gram.in_(sorted(wanted))
            )
        )
    )
    add_entries(conn, ((gram, contact_id) for gram in wanted - held))
