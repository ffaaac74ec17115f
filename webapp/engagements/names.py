"""Customer names: agents set the display name, and search finds customers by any name kept."""

from __future__ import annotations

from collections.abc import Sequence

from flask import current_app
from sqlalchemy import Connection, exists, select

from .. import audit
from ..dashboard.search import SearchQuery, scan
from ..database import SQLITE_IMMEDIATE, run_write_transaction
from ..extensions import db
from ..identity.search_index import GRAM, index_names, name_grams
from ..identity.service import customer_rows
from ..models import Contact, utcnow
from .history import display_name
from .models import NAME_FROM_AGENT, ContactName, name_key
from .service import lock_customer_of

_c = Contact.__table__.c
_n = ContactName.__table__.c


def _rename(primary_id: int, name: str, actor: str) -> bool:
    conn = db.session.connection(execution_options={SQLITE_IMMEDIATE: True})
    locked = lock_customer_of(conn, primary_id)
    # Only a live primary names a customer; a merged-away id would name someone else.
    if locked is None or locked != (primary_id, True):
        db.session.rollback()
        return False
    ids = [row.id for row in customer_rows(conn, primary_id)]
    before = display_name(conn, ids)
    if before == name:
        # Saved again as it is: nothing to keep, nothing to audit.
        db.session.rollback()
        return True
    db.session.add(
        ContactName(
            contact_id=primary_id,
            name=name,
            name_key=name_key(name),
            source=NAME_FROM_AGENT,
            actor=actor,
            created_at=utcnow(),
        )
    )
    index_names(conn, primary_id, [name_key(name)])
    audit.record(
        actor,
        "rename",
        customer_id=primary_id,
        subject=f"customer {primary_id}",
        before={"name": before},
        after={"name": name},
    )
    db.session.commit()
    return True


def set_display_name(primary_id: int, name: str, actor: str) -> bool:
    """Make ``name`` the customer's display name (audited); False when it is no live primary."""
    # End the caller's read transaction: the write must begin with the lock (BEGIN IMMEDIATE).
    db.session.rollback()
    return run_write_transaction(
        lambda: _rename(primary_id, name.strip(), actor),
        current_app.config["IDENTIFY_MAX_ATTEMPTS"],
    )


def customer_name(primary_id: int, contact_ids: Sequence[int] | None = None) -> str | None:
    """The display name of the customer whose primary row is ``primary_id``.

    ``contact_ids`` are its live rows when the caller has read them already.
    """
    conn = db.session.connection()
    if contact_ids is None:
        contact_ids = [row.id for row in customer_rows(conn, primary_id)]
    name = display_name(conn, contact_ids)
    db.session.rollback()
    return name


def match_names(conn: Connection, query: SearchQuery, before: int | None, limit: int) -> list[int]:
    """Search matcher: live contact rows holding a name that contains the query, highest first.

    Every name's grams ("n" kind) are in the search index, so this walks the
    index like the e-mail and phone matchers; the candidates' names get the
    real substring test.
    """
    term = query.text.lower()
    if len(term) < GRAM:
        return []
    holds_name = exists().where(_n.contact_id == _c.id, _n.name_key.contains(term, autoescape=True))
    return scan(conn, name_grams(term), holds_name, before, limit)


def name_index_entries(conn: Connection, contact_ids: Sequence[int]) -> set[tuple[str, int]]:
    """The search index entries (gram, contact id) of every name kept against these rows."""
    rows = conn.execute(
        select(_n.contact_id, _n.name_key).where(_n.contact_id.in_(list(contact_ids)))
    )
    return {(gram, contact_id) for contact_id, key in rows for gram in name_grams(key)}
