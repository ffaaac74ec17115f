"""``flask reconcile``: recompute every customer from its rows, with a progress bar."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..cli import DatabaseCommand
from ..models import MAX_ROW_ID
from ..text import counted
from .core import ReconcileError
from .jobs import claim_job, create_job, run_job


@click.command("reconcile", cls=DatabaseCommand)
@click.option(
    "--job",
    "job_id",
    type=click.IntRange(1, MAX_ROW_ID),
    help="Run this queued job (as the dashboard does).",
)
@with_appcontext
def reconcile_command(job_id: int | None) -> None:
    """Re-run reconciliation over the whole database, in short batched transactions."""
    try:
        if job_id is None:
            job_id = create_job("system").id
        total = claim_job(job_id).total
    except ReconcileError as exc:
        # Another run under way, or a --job that does not exist or has already started.
        raise click.ClickException(str(exc)) from None
    with click.progressbar(length=total, label=f"Reconciling {counted(total, 'customer')}") as bar:
        job = run_job(job_id, progress=bar.update)
    click.echo(
        f"Checked {counted(job.processed, 'customer')}: {job.customers_changed} changed, "
        f"{counted(job.rows_changed, 'contact row')} relinked."
    )
