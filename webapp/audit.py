"""The audit log: services record every action on customer data here (they commit)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape
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


# Customers, list items and runs of contact ids a state shows; the rest are counted. An
# unblock that joined 40,000 customers wrote them all in its state, and every page
# showing the entry listed them (the customer's timeline, the audit log).
STATE_ITEMS_SHOWN = 20

# How the state keys services write read on the dashboard; others read as their key.
_STATE_LABELS = {
    "emails": "e-mails",
    "phoneNumbers": "phones",
    "expires_at": "expires",
}
_BLOCK_KEYS = ("blocked_at", "blocked_by", "blocked_reason")


def state_lines(stored: str) -> list[Markup]:
    """A stored before/after state in words, one line per fact, for agents to read.

    ``{"customers": {"1": [1, 2, 3, 7]}, "blocked_at": null, ...}`` reads
    "customer #1: contacts #1 to #3, #7" and "not blocked". Customers keep
    their stored order (by number). A state that is not a JSON object is
    shown as :func:`readable` text, on one line. An escape in an older entry
    that is not text (a lone surrogate) stays escaped, as :func:`readable`
    keeps it: the page could not be sent with it.

    Lines are HTML: each value stored as text (an address, a reason, a name) is a
    ``<bdi>``, so one written right to left does not carry the words around it
    along ("by فاطمة: reason" keeps its order).
    """
    try:
        state = json.loads(stored)
    except ValueError:
        return [escape(readable(stored))]
    if not isinstance(state, dict):
        return [escape(readable(stored))]
    lines: list[Markup] = []
    customers = state.get("customers")
    if isinstance(customers, dict):
        listed = list(customers.items())
        lines += [_customer_line(primary, rows) for primary, rows in listed[:STATE_ITEMS_SHOWN]]
        if len(listed) > STATE_ITEMS_SHOWN:
            lines.append(Markup("and {:,} more customers").format(len(listed) - STATE_ITEMS_SHOWN))
    if any(key in state for key in _BLOCK_KEYS):
        lines.append(_block_line(state))
    for key, value in state.items():
        if key in _BLOCK_KEYS or (key == "customers" and isinstance(customers, dict)):
            continue
        label = _STATE_LABELS.get(key, key.replace("_", " "))
        if key == "added_contact":
            lines.append(Markup("added contact #{}").format(value))
        elif key == "deleted_contacts" and isinstance(value, dict):
            lines += _deleted_lines(value)
        elif key == "discount":
            lines.append(Markup("discount: {}%").format(_text(value)))
        elif key.endswith("_at") and value is not None:
            lines.append(Markup("{}: {}").format(label, _time(value)))
        else:
            lines.append(Markup("{}: {}").format(label, _text(value)))
    return [Markup(_sendable(line)) for line in lines]


def _sendable(line: str) -> str:
    """``line`` with any lone surrogate written as its ``\\uXXXX`` escape (UTF-8 has none)."""
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _deleted_lines(links: dict) -> list[Markup]:
    """Deleted rows a repair relinked, ``{row id: linkedId}``, one line per row they
    point at: "deleted contacts #3 to #5: linked to #2"; null is a primary's link."""
    by_target: dict[Any, list[int]] = {}
    for row, target in links.items():
        if not (str(row).isdigit() and (target is None or isinstance(target, int))):
            return [Markup("deleted contacts: {}").format(_text(links))]
        by_target.setdefault(target, []).append(int(row))
    lines = []
    for target, rows in list(by_target.items())[:STATE_ITEMS_SHOWN]:
        noun = "deleted contact" if len(rows) == 1 else "deleted contacts"
        where = "not linked (a primary)" if target is None else f"linked to #{target}"
        lines.append(Markup("{} {}: {}").format(noun, _runs(sorted(rows)), where))
    if len(by_target) > STATE_ITEMS_SHOWN:
        left = sum(len(rows) for rows in list(by_target.values())[STATE_ITEMS_SHOWN:])
        lines.append(Markup("and {:,} more deleted contacts").format(left))
    return lines


def _customer_line(primary: str, rows: Any) -> Markup:
    if not isinstance(rows, list) or not all(isinstance(r, int) for r in rows):
        return Markup("customer #{}: {}").format(primary, _text(rows))
    if not rows:
        return Markup("customer #{}: no live contacts").format(primary)
    noun = "contact" if len(rows) == 1 else "contacts"
    return Markup("customer #{}: {} {}").format(primary, noun, _runs(sorted(rows)))


def _runs(ids: Sequence[int]) -> str:
    """``#1 to #40, #305``: three or more ids in a row as a range; past STATE_ITEMS_SHOWN
    parts, the ids left are counted."""
    parts: list[str] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[end - 1] + 1:
            first, last = ids[start], ids[end - 1]
            if len(parts) >= STATE_ITEMS_SHOWN:
                return ", ".join(parts) + f" and {len(ids) - start:,} more"
            if end - start >= 3:
                parts.append(f"#{first} to #{last}")
            else:
                parts.extend(f"#{i}" for i in ids[start:end])
            start = end
    return ", ".join(parts)


def _block_line(state: dict) -> Markup:
    if state.get("blocked_at") is None:
        return Markup("not blocked")
    line = Markup("blocked {}").format(_time(state["blocked_at"]))
    if state.get("blocked_by"):
        line += Markup(" by {}").format(_text(state["blocked_by"]))
    if state.get("blocked_reason"):
        line += Markup(": {}").format(_text(state["blocked_reason"]))
    return line


def _time(value: Any) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(value)


def _text(value: Any) -> Markup:
    """A stored value for a state line: text isolated in ``<bdi>``, numbers as they are."""
    if value is None:
        return Markup("none")
    if isinstance(value, list):
        if not value:
            return Markup("none")
        shown = Markup(", ").join(_text(v) for v in value[:STATE_ITEMS_SHOWN])
        if len(value) > STATE_ITEMS_SHOWN:
            shown += Markup(" and {:,} more").format(len(value) - STATE_ITEMS_SHOWN)
        return shown
    if isinstance(value, dict):
        return Markup("<bdi>{}</bdi>").format(json.dumps(value, ensure_ascii=False))
    if isinstance(value, str):
        return Markup("<bdi>{}</bdi>").format(value)
    return escape(value)
