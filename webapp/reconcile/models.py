"""Tables of manual reconciliation: whole-database runs (bonds live with the core models)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import MYSQL_TABLE_ARGS, Timestamp, utcnow

# A run whose heartbeat is older than this has died (its process was killed).
STALE_AFTER = timedelta(minutes=5)

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"


class ReconcileJob(db.Model):
    """A whole-database reconciliation run and its progress, readable by any worker."""

    __tablename__ = "reconcile_job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    # 1 while queued or running, NULL after: the unique key allows one active run.
    active: Mapped[int | None] = mapped_column(Integer, default=1)
    actor: Mapped[str] = mapped_column(String(320))
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    customers_changed: Mapped[int] = mapped_column(Integer, default=0)
    rows_changed: Mapped[int] = mapped_column(Integer, default=0)
    # The last primary id handled: a run continues after it.
    cursor: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Written with every batch: a run whose heartbeat stops has died.
    heartbeat_at: Mapped[datetime | None] = mapped_column(Timestamp)

    __table_args__ = (UniqueConstraint("active"), MYSQL_TABLE_ARGS)

    @property
    def stalled(self) -> bool:
        """An active run whose process stopped writing progress."""
        beat = self.heartbeat_at or self.created_at
        return self.active is not None and beat < utcnow() - STALE_AFTER

    @property
    def percent(self) -> int:
        """Progress as a whole percentage."""
        if self.status == DONE:
            return 100
        return min(99, self.processed * 100 // self.total) if self.total else 0
