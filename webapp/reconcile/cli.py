"""``flask reconcile``: recompute every customer from its rows, with a progress bar."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..text import counted
from .jobs import claim_job, create_job, run_job


@click.command("reconcile")
@click.option("--job", "job_id", type=int, help="Run this queued job (as the dashboard does).")
@with_appcontext
def reconcile_command(job_id: int | None) -> None:
    """Re-run reconciliation over the whole database, in short batched transactions."""
    if job_id is None:
        job_id = create_job("system").id
    total = claim_job(job_id).total
    with click.progressbar(length=total, label=f"Reconciling {counted(total, 'customer')}") as bar:
        job = run_job(job_id, progress=bar.update)
    click.echo(
        f"Checked {counted(job.processed, 'customer')}: {job.customers_changed} changed, "
        f"{counted(job.rows_changed, 'contact row')} relinked."
    )
