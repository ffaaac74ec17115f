"""Where an identify request spends its time: the mix replayed in-process, per kind of request.

Seeds a fresh database like identify_bench.py, then sends the checkout mix
one request at a time through the Flask test client (no gunicorn, no
concurrency), and prints the median and 99th percentile of each kind of
request (returning, new customer, new e-mail). With ``--profile`` it also
prints a pyinstrument call tree; pyinstrument is a profiling aid, not a
project dependency: ``.venv/bin/pip install pyinstrument`` first.

    python bench/identify_profile.py --contacts 1000000 --database sqlite --profile
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make the project importable.
    sys.path.insert(0, str(ROOT))

from bench import customers  # noqa: E402
from bench.mix import MixWriter  # noqa: E402
from bench.reporting import latency_stats, run_directory  # noqa: E402
from bench.seeding import DEFAULT_MYSQL_SERVER, fresh_database, seed_customers  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402


@click.command()
@click.option("--contacts", default=1_000_000, show_default=True)
@click.option("--database", type=click.Choice(["sqlite", "mariadb"]), default="sqlite")
@click.option("--requests", "count", default=2000, show_default=True)
@click.option("--seed", default=20261123, show_default=True)
@click.option("--profile", is_flag=True, help="Also print a pyinstrument call tree.")
@click.option("--mysql-server", default=DEFAULT_MYSQL_SERVER, show_default=True)
def main(contacts, database, count, seed, profile, mysql_server) -> None:
    """Replay the identify mix in-process and report the time per kind of request."""
    logging.basicConfig(level=logging.WARNING)
    profiler = None
    if profile:
        try:
            from pyinstrument import Profiler
        except ImportError as exc:
            raise click.UsageError("--profile needs pyinstrument in the venv") from exc
        profiler = Profiler(interval=0.0005)
    size = customers.customers_for_contacts(contacts)
    run_dir = run_directory("identify-profile")
    with fresh_database(database, "bench_identify_profile", run_dir, mysql_server) as url:
        seeded = seed_customers(url, size)
        app = create_app(
            {"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "benchmark-only-not-secret-0123456789"}
        )
        client = app.test_client()
        writer = MixWriter(size, seed)
        requests = [writer.draw() for _ in range(count)]
        timings: dict[str, list[float]] = defaultdict(list)
        failures = 0
        if profiler is not None:
            profiler.start()
        for kind, body in requests:
            started = time.perf_counter()
            response = client.post("/identify", json=body)
            timings[kind].append((time.perf_counter() - started) * 1000)
            failures += response.status_code != 200
        if profiler is not None:
            profiler.stop()
        with app.app_context():
            db.engine.dispose()
    click.echo(f"{database}, {seeded.contacts:,} contacts, {count} requests, {failures} not 200")
    for kind, ms in sorted(timings.items()):
        st = latency_stats(ms)
        click.echo(
            f"  {kind:10} {st['samples']:5} requests  p50 {st['p50_ms']:7.2f} ms"
            f"  p99 {st['p99_ms']:7.2f} ms"
        )
    if profiler is not None:
        click.echo(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    main()
