"""The audit log: services record every action on customer data here (they commit)."""

from __future__ import annotations

import json
from typing import Any

from .extensions import db
from .models import AuditEntry


def record(
    actor: str,
    action: str,
    *,
    customer_id: int | None = None,
    subject: str | None = None,
    reason: str | None = None,
    before: Any = None,
    after: Any = None,
) -> AuditEntry:
    """Add an audit entry to the session; the calling service commits it with its change."""
    entry = AuditEntry(
        actor=actor,
        action=action,
        customer_id=customer_id,
        subject=subject,
        reason=reason,
        before=None if before is None else json.dumps(before, default=str, sort_keys=True),
        after=None if after is None else json.dumps(after, default=str, sort_keys=True),
    )
    db.session.add(entry)
    return entry
