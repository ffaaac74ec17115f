"""Keyset cursors in links: a row's (timestamp, id) written as ``<iso time>~<id>``."""

from __future__ import annotations

from datetime import datetime


class InvalidCursor(ValueError):
    """A cursor value that ``encode_cursor`` did not write."""


def encode_cursor(at: datetime, row_id: int) -> str:
    """The cursor that continues after the row at (``at``, ``row_id``)."""
    return f"{at.isoformat()}~{row_id}"


def decode_cursor(raw: str) -> tuple[datetime, int]:
    """Parse a cursor back into (timestamp, id); raises InvalidCursor."""
    moment, _, row_id = raw.partition("~")
    try:
        at, after_id = datetime.fromisoformat(moment), int(row_id)
    except ValueError:
        raise InvalidCursor(raw) from None
    # encode_cursor writes naive UTC and an id the database can hold; anything else is forged.
    if at.tzinfo is not None or not 0 <= after_id < 2**63:
        raise InvalidCursor(raw)
    return at, after_id
