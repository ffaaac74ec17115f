"""``flask search ...``: maintain the dashboard's search index."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import func, select

from ..extensions import db
from ..models import Contact
from .search import reindex


@click.group("search")
def search() -> None:
    """Maintain the customer search index."""


@search.command("reindex")
@click.option("--batch-size", default=5000, show_default=True, help="Contacts per transaction.")
@with_appcontext
def reindex_command(batch_size: int) -> None:
    """Rebuild the search index of every contact (after a bulk load, for instance)."""
    total = db.session.scalar(select(func.count()).select_from(Contact)) or 0
    db.session.rollback()
    with click.progressbar(length=total, label="indexing contacts") as bar:
        done = reindex(batch_size=batch_size, progress=bar.update)
    click.echo(f"indexed {done} contacts")
