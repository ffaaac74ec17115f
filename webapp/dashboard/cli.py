"""``flask search ...``: maintain the dashboard's search index."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..cli import DatabaseGroup
from .search import contact_count, reindex

# Each batch is one write transaction (on SQLite it holds the database's write lock,
# so checkout waits for it); the bound also keeps the batch's LIMIT in range.
MAX_BATCH = 100_000


@click.group("search", cls=DatabaseGroup)
def search() -> None:
    """Maintain the customer search index."""


@search.command("reindex")
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=5000,
    show_default=True,
    help=f"Contacts per transaction, 1 to {MAX_BATCH}.",
)
@with_appcontext
def reindex_command(batch_size: int) -> None:
    """Rebuild the search index of every contact (after a bulk load, for instance)."""
    with click.progressbar(length=contact_count(), label="indexing contacts") as bar:
        done = reindex(batch_size=batch_size, progress=bar.update)
    click.echo(f"indexed {done} contacts")
