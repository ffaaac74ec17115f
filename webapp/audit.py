"""The audit log: services record every action on customer data here (they commit)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert

from .extensions import db
from .models import AuditCustomer, AuditEntry


def record(actor: str, action: str, **details: Any) -> AuditEntry:
    """Add an audit entry to the session; the calling service commits it with its change.

    ``details``: ``customer_id`` (the primary id concerned), ``subject`` and
    ``reason`` in words, ``before`` and ``after`` states (stored as JSON).
    """
    entry = AuditEntry(**_columns(actor, action, **details))
    entry.named_customers = [AuditCustomer(customer_id=c) for c in named_customers(**details)]
    db.session.add(entry)
    return entry


def record_on(conn: Connection, actor: str, action: str, **details: Any) -> None:
    """Write an audit entry on ``conn``, in the transaction of the change it describes.

    For services that write through a connection of their own rather than
    the ORM session; ``details`` are :func:`record`'s keyword arguments.
    """
    written = conn.execute(
        insert(AuditEntry.__table__).values(**_columns(actor, action, **details))
    )
    named = named_customers(**details)
    if named:
        entry_id = written.inserted_primary_key[0]
        conn.execute(
            insert(AuditCustomer.__table__),
            [{"customer_id": c, "audit_entry_id": entry_id} for c in named],
        )


def named_customers(customer_id: int | None = None, **details: Any) -> list[int]:
    """The customers a before/after state lists under ``customers``, but ``customer_id``.

    Reconciliation's states are ``{"customers": {primary id: [row ids]}, ...}``.
    """
    named: set[int] = set()
    for state in (details.get("before"), details.get("after")):
        customers = state.get("customers") if isinstance(state, dict) else None
        if isinstance(customers, dict):
            named.update(int(primary) for primary in customers)
    named.discard(customer_id)
    return sorted(named)


def _columns(
    actor: str,
    action: str,
    *,
    customer_id: int | None = None,
    subject: str | None = None,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
) -> dict[str, Any]:
    return {
        "actor": actor,
        "action": action,
        "customer_id": customer_id,
        "subject": subject,
        "reason": reason,
        "before": None if before is None else _dumps(before),
        "after": None if after is None else _dumps(after),
    }


def _dumps(state: Any) -> str:
    # Names and addresses as typed ("فاطمة", not "\u0641..."): agents read these.
    return json.dumps(state, default=str, sort_keys=True, ensure_ascii=False)


def readable(stored: str) -> str:
    """A stored before/after state for display, non-ASCII text as itself.

    Entries written before states were stored that way hold ``\\uXXXX`` escapes.
    An escape that is not text (a lone surrogate) stays escaped. Keys keep
    their stored order: customer ids were sorted as numbers when written, and
    sorting them again, now as text, would list customer 10 before customer 2.
    """
    try:
        text = json.dumps(json.loads(stored), ensure_ascii=False)
        text.encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        return stored
    return text
