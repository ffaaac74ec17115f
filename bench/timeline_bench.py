"""Benchmark a customer's activity timeline: 100 thousand events in a table of 10 million.

For each database it builds a fresh schema with the migrations, seeds
customers in identify's shape, then loads the engagement table in time order
(ids rise with time, as live traffic writes them): one customer gets
``--customer-events`` events across its contact rows, in visits and
conversations, and every other contact shares the rest. The two timeline
indexes are dropped during the load and built again afterwards, which gives
the same indexes far faster than maintaining them row by row.

It then times ``customer_activity`` in-process: the first page, pages deep in
the history through the cursor, each channel filter, and an ordinary customer.

    python bench/timeline_bench.py                                   # 10M events, both databases
    python bench/timeline_bench.py --events 1000000 --databases mariadb
"""

from __future__ import annotations

import heapq
import logging
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script: make the project importable.
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench import customers  # noqa: E402
from bench.reporting import (  # noqa: E402
    environment,
    environment_markdown,
    latency_stats,
    mariadb_version,
    run_directory,
    write_report,
)
from bench.seeding import (  # noqa: E402
    BATCH_ROWS,
    DEFAULT_MYSQL_SERVER,
    SEED_SPAN,
    SEED_START,
    bulk_engine,
    fresh_database,
    seed_customers,
)
from webapp import create_app  # noqa: E402
from webapp.engagements.activity import customer_activity  # noqa: E402
from webapp.engagements.models import CHANNELS, WEB, Engagement  # noqa: E402
from webapp.extensions import db  # noqa: E402

log = logging.getLogger("timeline_bench")

# Issue 4: the timeline stays under 100 ms for a customer with 100k events.
TARGET_MS = 100.0

# The busy customer is the first seeded one: a primary and a secondary row.
TARGET_INDEX = 0

# Shares of the channels in the stream of events.
CHANNEL_WEIGHTS = {"web": 50, "email": 15, "sms": 10, "whatsapp": 10, "call": 10, "facebook": 5}

_engagement = Engagement.__table__


def _event(rng: random.Random, serial: int, contact_id: int, at: datetime, channel: str) -> dict:
    if channel == WEB:
        return {
            "contact_id": contact_id,
            "channel": WEB,
            "direction": None,
            "occurred_at": at,
            "summary": None,
            "url": f"https://shop.example/products/{rng.randrange(5000)}",
            "duration_seconds": None,
            "external_id": None,
            "created_at": at,
        }
    return {
        "contact_id": contact_id,
        "channel": channel,
        "direction": rng.choice(("inbound", "outbound")),
        "occurred_at": at,
        "summary": f"{channel} about order {rng.randrange(10**6)}",
        "url": None,
        "duration_seconds": rng.randrange(20, 900) if channel == "call" else None,
        # The channel's own message or call id: unique per channel, as retries rely on.
        "external_id": f"{channel}-{serial}",
        "created_at": at,
    }


def _busy_customer_events(
    rng: random.Random, contact_ids: list[int], count: int
) -> Iterator[tuple[datetime, int, str]]:
    """(time, contact id, channel) of the busy customer's events, oldest first.

    Page views come in visits (a few to a few dozen views a minute or so
    apart); other channels come one at a time.
    """
    # A visit averages 21 views and half the sessions are visits: 11 events a session.
    gap = SEED_SPAN * 11 / count
    at = SEED_START
    made = 0
    while made < count:
        at += timedelta(seconds=rng.uniform(0.2, 1.8) * gap.total_seconds())
        contact_id = rng.choice(contact_ids)
        if rng.random() < 0.5:
            views = min(rng.randint(2, 40), count - made)
            for view in range(views):
                yield at + timedelta(seconds=70 * view), contact_id, WEB
            made += views
        else:
            channels = [c for c in CHANNELS if c != WEB]
            yield at, contact_id, rng.choice(channels)
            made += 1


def _background_events(
    rng: random.Random, contact_ids: list[int], count: int
) -> Iterator[tuple[datetime, int, str]]:
    """Everybody else's events, evenly over the seeded period, oldest first."""
    step = SEED_SPAN / max(count, 1)
    channels = list(CHANNEL_WEIGHTS)
    weights = list(CHANNEL_WEIGHTS.values())
    drawn = rng.choices(channels, weights, k=min(count, 100_000))
    for serial in range(count):
        yield (
            SEED_START + step * serial,
            contact_ids[rng.randrange(len(contact_ids))],
            drawn[serial % len(drawn)],
        )


def _timeline_indexes() -> list[sa.Index]:
    return sorted(
        (index for index in _engagement.indexes if not index.unique), key=lambda i: i.name
    )


def seed_engagements(url: str, total: int, busy: int, busy_ids: list[int], others: list[int]):
    """Load ``total`` events in time order, ``busy`` of them for the busy customer."""
    rng = random.Random(4)
    engine = bulk_engine(url)
    indexes = _timeline_indexes()
    with engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
    stream = heapq.merge(
        _busy_customer_events(rng, busy_ids, busy),
        _background_events(rng, others, total - busy),
    )
    batch: list[dict] = []
    written = 0
    for serial, (at, contact_id, channel) in enumerate(stream):
        batch.append(_event(rng, serial, contact_id, at, channel))
        if len(batch) >= BATCH_ROWS:
            with engine.begin() as conn:
                conn.execute(sa.insert(_engagement), batch)
            written += len(batch)
            batch = []
            if written % 1_000_000 == 0:
                log.info("loaded %d of %d events", written, total)
    if batch:
        with engine.begin() as conn:
            conn.execute(sa.insert(_engagement), batch)
        written += len(batch)
    started = time.perf_counter()
    with engine.begin() as conn:
        for index in indexes:
            index.create(conn)
    log.info("built %d indexes in %.0f s", len(indexes), time.perf_counter() - started)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return written


def _timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, (time.perf_counter() - started) * 1000


def _check_page(page, problems: list[str], label: str) -> None:
    """A page must hold entries, newest first."""
    if page is None or not page.entries:
        problems.append(f"{label}: empty page")
        return
    moments = [entry.at for entry in page.entries]
    if moments != sorted(moments, reverse=True):
        problems.append(f"{label}: entries not newest first")


def time_timeline(url: str, busy_primary: int, ordinary_primaries: list[int], repeats: int):
    """Time the activity service on the busy customer and on ordinary ones."""
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "benchmark-only-not-secret-0123456789"}
    )
    results: dict[str, dict] = {}
    problems: list[str] = []
    with app.app_context():
        customer_activity(busy_primary)
        first = []
        for _ in range(repeats):
            page, ms = _timed(customer_activity, busy_primary)
            first.append(ms)
        _check_page(page, problems, "first page")
        results["first page"] = latency_stats(first)

        deep, cursor, pages = [], page.next_cursor, 1
        while cursor and pages < repeats:
            page, ms = _timed(customer_activity, busy_primary, before=cursor)
            _check_page(page, problems, f"page {pages + 1}")
            deep.append(ms)
            cursor, pages = page.next_cursor, pages + 1
        results[f"next {len(deep)} pages by cursor"] = latency_stats(deep)

        for channel in CHANNELS:
            times = []
            for _ in range(max(5, repeats // 5)):
                page, ms = _timed(customer_activity, busy_primary, channel=channel)
                times.append(ms)
            _check_page(page, problems, f"channel {channel}")
            results[f"first page, {channel} only"] = latency_stats(times)

        ordinary = []
        for primary in ordinary_primaries:
            page, ms = _timed(customer_activity, primary)
            ordinary.append(ms)
        results["ordinary customers, first page"] = latency_stats(ordinary)
        db.engine.dispose()
    return results, problems


def _markdown(data: dict) -> str:
    s = data["settings"]
    lines = [
        "# timeline benchmark",
        "",
        environment_markdown(data["environment"]),
        f"Settings: {s['customer_events']:,} events for one customer, "
        f"{s['customers']:,} customers; customer_activity timed in-process.",
        "",
        "| database | events in table | what | samples | p50 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for dialect, result in data["results"].items():
        for what, st in result["timings"].items():
            lines.append(
                f"| {dialect} | {result['events']:,} | {what} | {st['samples']} | "
                f"{st['p50_ms']} | {st['p99_ms']} | {st['max_ms']} |"
            )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for verdict in data["verdicts"]:
        met = "yes" if verdict["met"] else "**no**"
        lines.append(f"| {verdict['target']} | {verdict['measured']} | {met} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--events", default=10_000_000, show_default=True, help="Rows in the table.")
@click.option("--customer-events", default=100_000, show_default=True)
@click.option("--customers", "customer_count", default=200_000, show_default=True)
@click.option("--databases", default="sqlite,mariadb", show_default=True)
@click.option("--repeats", default=50, show_default=True, help="Timed calls per measurement.")
@click.option("--mysql-server", default=DEFAULT_MYSQL_SERVER, show_default=True)
def main(events, customer_events, customer_count, databases, repeats, mysql_server) -> None:
    """Seed a busy customer in a large engagement table and time its timeline."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dialects = [d.strip() for d in databases.split(",") if d.strip()]
    if "mariadb" in dialects and mariadb_version(mysql_server) is None:
        raise click.UsageError(f"MariaDB does not answer at {mysql_server}; try --databases sqlite")
    if customer_events >= events:
        raise click.UsageError("--customer-events must be smaller than --events")
    # The code measured is the code at the start of the run.
    started_with = environment(mysql_server if "mariadb" in dialects else None)
    busy_primary = customers.primary_id(TARGET_INDEX)
    busy_ids = [busy_primary, busy_primary + 1]
    total_contacts = customers.contact_rows_per_customers(customer_count)
    others = list(range(busy_ids[-1] + 1, total_contacts + 1))
    rng = random.Random(7)
    ordinary = [customers.primary_id(rng.randrange(1, customer_count)) for _ in range(repeats)]
    run_dir = run_directory("timeline")
    results = {}
    for dialect in dialects:
        with fresh_database(dialect, "bench_timeline", run_dir, mysql_server) as url:
            seeded = seed_customers(url, customer_count)
            started = time.perf_counter()
            loaded = seed_engagements(url, events, customer_events, busy_ids, others)
            load_seconds = time.perf_counter() - started
            log.info("%s: %d events loaded in %.0f s", dialect, loaded, load_seconds)
            timings, problems = time_timeline(url, busy_primary, ordinary, repeats)
        results[dialect] = {
            "events": loaded,
            "contacts": seeded.contacts,
            "load_seconds": round(load_seconds, 1),
            "timings": timings,
            "problems": problems,
        }
        log.info("%s: %s", dialect, timings)
    verdicts = []
    for dialect, result in results.items():
        worst = max(st["p99_ms"] for st in result["timings"].values())
        verdicts.append(
            {
                "target": f"{dialect}, {result['events']:,} events: every timeline read p99 "
                f"< {TARGET_MS:g} ms",
                "measured": worst,
                "met": worst < TARGET_MS,
            }
        )
        verdicts.append(
            {
                "target": f"{dialect}: every page non-empty and newest first",
                "measured": "; ".join(result["problems"]) or "ok",
                "met": not result["problems"],
            }
        )
    data = {
        "environment": started_with,
        "settings": {
            "events": events,
            "customer_events": customer_events,
            "customers": customer_count,
            "repeats": repeats,
        },
        "results": results,
        "verdicts": verdicts,
    }
    markdown = _markdown(data)
    json_path, md_path = write_report("timeline", run_dir, data, markdown)
    click.echo(markdown)
    click.echo(f"written: {json_path} and {md_path}")


if __name__ == "__main__":
    main()
