"""Benchmark POST /identify under a checkout-like mix against a bare Flask endpoint.

For each database (SQLite file, fresh MariaDB database) and each seed size it
builds a fresh schema with the migrations, bulk-seeds customers in the shape
identify writes, serves the real app with gunicorn and drives it with wrk;
the bare app in bench/bare_app.py gets the same requests under the same
gunicorn settings. Results go to bench/results/ as JSON and Markdown.

    python bench/identify_bench.py                       # 10k and 1M, SQLite and MariaDB
    python bench/identify_bench.py --sizes 10000 --databases sqlite --duration 5
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script (make bench): make the project importable.
    sys.path.insert(0, str(ROOT))

from bench import customers  # noqa: E402
from bench.load import LoadResult, Server, gunicorn, run_wrk  # noqa: E402
from bench.mix import MixWriter  # noqa: E402
from bench.reporting import (  # noqa: E402
    environment,
    environment_markdown,
    mariadb_version,
    run_directory,
    write_report,
)
from bench.seeding import (  # noqa: E402
    DEFAULT_MYSQL_SERVER,
    app_environment,
    fresh_database,
    seed_customers,
    table_count,
)
from webapp.models import Contact  # noqa: E402

log = logging.getLogger("identify_bench")

# Targets from issue 2 (SQLite): throughput against the bare endpoint, tail
# latency, and how much the median may grow from 10k to 1M contacts.
TARGET_RATIO = 0.75
TARGET_P99_MS = 25.0
TARGET_SIZE_GROWTH = 1.2

# Bodies drawn per second of run, above what this app can serve, so that a
# run never has to replay requests (new customers would turn into returning).
BODIES_PER_SECOND = 8_000


def _bodies(writer: MixWriter, path: Path, seconds: int) -> Path:
    kinds = writer.write(path, max(20_000, seconds * BODIES_PER_SECOND))
    log.info("wrote %s: %s", path.name, dict(kinds))
    return path


def _measure(
    server: Server, warmup_file: Path, bodies_file: Path, run_dir: Path, label: str, opts: dict
) -> LoadResult:
    # The machine may be shared: record how busy it was around the run.
    load_before = os.getloadavg()[0]
    if opts["warmup"]:
        run_wrk(
            server.url,
            warmup_file,
            run_dir,
            label=f"{label}-warmup",
            duration=opts["warmup"],
            connections=opts["connections"],
        )
    cpu_before = server.worker_cpu_seconds()
    result = run_wrk(
        server.url,
        bodies_file,
        run_dir,
        label=label,
        duration=opts["duration"],
        connections=opts["connections"],
    )
    cpu = server.worker_cpu_seconds() - cpu_before
    result.worker_cpu_ms = round(cpu * 1000 / result.requests, 3) if result.requests else None
    result.load_average = (round(load_before, 2), round(os.getloadavg()[0], 2))
    log.info(
        "%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d, worker CPU %s ms per request",
        label,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        result.non_2xx,
        result.worker_cpu_ms,
    )
    return result


def _bare_run(dialect: str, contacts: int, run_dir: Path, opts: dict) -> LoadResult:
    """The bare endpoint with the same kind of requests and the same gunicorn settings."""
    writer = MixWriter(customers.customers_for_contacts(contacts), opts["seed"])
    warmup = _bodies(writer, run_dir / f"bare-{dialect}-warmup.txt", opts["warmup"])
    bodies = _bodies(writer, run_dir / f"bare-{dialect}.txt", opts["duration"])
    with gunicorn(
        "bare_app:app",
        dict(os.environ),
        opts["workers"],
        run_dir / f"bare-{dialect}.gunicorn.log",
        pythonpath=Path(__file__).parent,
    ) as server:
        return _measure(server, warmup, bodies, run_dir, f"bare-{dialect}", opts)


def _identify_run(dialect: str, contacts: int, run_dir: Path, opts: dict) -> dict:
    """Seed about ``contacts`` contact rows into a fresh database and drive identify on it."""
    label = f"identify-{dialect}-{contacts}"
    size = customers.customers_for_contacts(contacts)
    name = f"bench_identify_{contacts}"
    with fresh_database(dialect, name, run_dir, opts["mysql_server"]) as url:
        log.info("%s: seeding %d customers", label, size)
        seeded = seed_customers(url, size)
        log.info("%s: seeded %d contact rows in %.1f s", label, seeded.contacts, seeded.seconds)
        writer = MixWriter(size, opts["seed"])
        warmup = _bodies(writer, run_dir / f"{label}-warmup.txt", opts["warmup"])
        bodies = _bodies(writer, run_dir / f"{label}.txt", opts["duration"])
        log_path = run_dir / f"{label}.gunicorn.log"
        with gunicorn("wsgi:app", app_environment(url), opts["workers"], log_path) as server:
            result = _measure(server, warmup, bodies, run_dir, label, opts)
        contacts_after = table_count(url, Contact.__table__)
    server_errors = sum(
        1 for line in log_path.read_text().splitlines() if "Traceback" in line or " ERROR " in line
    )
    return {
        "customers": size,
        "contacts_seeded": seeded.contacts,
        "identifiers_seeded": seeded.identifiers,
        "seed_seconds": round(seeded.seconds, 1),
        # Rows written by the warm-up and the measured run together.
        "contacts_written": contacts_after - seeded.contacts,
        "server_errors_logged": server_errors,
        **result.as_dict(),
    }


def _floor_run(contacts: int, run_dir: Path, opts: dict) -> dict:
    """bench/floor_app.py on a freshly seeded SQLite database: the least identify could cost."""
    label = f"floor-sqlite-{contacts}"
    size = customers.customers_for_contacts(contacts)
    with fresh_database("sqlite", f"bench_floor_{contacts}", run_dir) as url:
        seeded = seed_customers(url, size)
        writer = MixWriter(size, opts["seed"])
        warmup = _bodies(writer, run_dir / f"{label}-warmup.txt", opts["warmup"])
        bodies = _bodies(writer, run_dir / f"{label}.txt", opts["duration"])
        env = dict(os.environ, FLOOR_DATABASE=make_url(url).database)
        log_path = run_dir / f"{label}.gunicorn.log"
        with gunicorn(
            "floor_app:app", env, opts["workers"], log_path, pythonpath=Path(__file__).parent
        ) as server:
            result = _measure(server, warmup, bodies, run_dir, label, opts)
    return {"contacts_seeded": seeded.contacts, **result.as_dict()}


def _verdicts(results: dict) -> list[dict]:
    """Each issue-2 target, the figure measured and whether it was met."""
    verdicts = []
    for dialect, section in results.items():
        bare = section["bare"]
        runs = section["identify"]
        if "floor" in section:
            floor = section["floor"]
            floor["ratio"] = round(floor["rps"] / bare["rps"], 3) if bare["rps"] else None
        for run in runs:
            run["ratio"] = round(run["rps"] / bare["rps"], 3) if bare["rps"] else None
            if dialect == "sqlite":
                verdicts.append(
                    {
                        "target": f"SQLite, {run['contacts_seeded']:,} contacts: "
                        f"throughput >= {TARGET_RATIO} x bare",
                        "measured": run["ratio"],
                        "met": run["ratio"] is not None and run["ratio"] >= TARGET_RATIO,
                    }
                )
                verdicts.append(
                    {
                        "target": f"SQLite, {run['contacts_seeded']:,} contacts: "
                        f"p99 < {TARGET_P99_MS:g} ms",
                        "measured": run["p99_ms"],
                        "met": run["p99_ms"] < TARGET_P99_MS,
                    }
                )
            verdicts.append(
                {
                    "target": f"{dialect}, {run['contacts_seeded']:,} contacts: every response 2xx",
                    "measured": run["non_2xx"],
                    "met": run["non_2xx"] == 0 and run["server_errors_logged"] == 0,
                }
            )
        if len(runs) > 1:
            small, large = runs[0], runs[-1]
            growth = round(large["p50_ms"] / small["p50_ms"], 3) if small["p50_ms"] else None
            section["p50_growth"] = growth
            verdicts.append(
                {
                    "target": f"{dialect}: p50 at {large['contacts_seeded']:,} contacts within "
                    f"{TARGET_SIZE_GROWTH} x p50 at {small['contacts_seeded']:,}",
                    "measured": growth,
                    "met": growth is not None and growth <= TARGET_SIZE_GROWTH,
                }
            )
    return verdicts


def _load(run: dict) -> str:
    load = run.get("load_average")
    return f"{load[0]}, {load[1]}" if load else "-"


def _markdown(data: dict) -> str:
    opts = data["settings"]
    lines = [
        "# identify benchmark",
        "",
        environment_markdown(data["environment"]),
        f"Settings: gunicorn {opts['workers']} sync workers, wrk {opts['connections']} "
        f"connections, {opts['duration']} s per run after a {opts['warmup']} s warm-up, "
        f"mix seed {opts['seed']}.",
        "",
        "| database | contacts seeded | endpoint | req/s | p50 ms | p99 ms | ratio "
        "| worker CPU ms/request | non-2xx | load avg before, after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for dialect, section in data["results"].items():
        bare = section["bare"]
        lines.append(
            f"| {dialect} | - | bare Flask | {bare['rps']:,.0f} | {bare['p50_ms']:.2f} | "
            f"{bare['p99_ms']:.2f} | 1 | {bare['worker_cpu_ms']} | {bare['non_2xx']} "
            f"| {_load(bare)} |"
        )
        floor = section.get("floor")
        if floor:
            lines.append(
                f"| {dialect} | {floor['contacts_seeded']:,} | floor (1 read, insert if new) "
                f"| {floor['rps']:,.0f} | {floor['p50_ms']:.2f} | {floor['p99_ms']:.2f} "
                f"| {floor['ratio']} | {floor['worker_cpu_ms']} | {floor['non_2xx']} "
                f"| {_load(floor)} |"
            )
        for run in section["identify"]:
            lines.append(
                f"| {dialect} | {run['contacts_seeded']:,} | identify | {run['rps']:,.0f} | "
                f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['ratio']} "
                f"| {run['worker_cpu_ms']} | {run['non_2xx']} | {_load(run)} |"
            )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for verdict in data["verdicts"]:
        met = "yes" if verdict["met"] else "**no**"
        lines.append(f"| {verdict['target']} | {verdict['measured']} | {met} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option(
    "--sizes",
    default="10000,1000000",
    show_default=True,
    help="Contact rows to seed, comma-separated; the first and last are compared.",
)
@click.option("--databases", default="sqlite,mariadb", show_default=True)
@click.option("--duration", default=20, show_default=True, help="Seconds per measured run.")
@click.option("--warmup", default=3, show_default=True, help="Seconds of warm-up before each.")
@click.option("--connections", default=16, show_default=True)
@click.option("--workers", default=4, show_default=True, help="gunicorn workers.")
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="Also drive bench/floor_app.py on SQLite: the least any identify could cost.",
)
@click.option("--seed", default=20261123, show_default=True, help="Seed of the request mix.")
@click.option(
    "--mysql-server",
    default=DEFAULT_MYSQL_SERVER,
    show_default=True,
    help="MariaDB server; a fresh database is created on it and dropped afterwards.",
)
def main(
    sizes, databases, duration, warmup, connections, workers, floor, seed, mysql_server
) -> None:
    """Seed, drive identify and a bare endpoint with wrk, and write the figures."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    size_list = [int(s) for s in sizes.split(",") if s.strip()]
    dialects = [d.strip() for d in databases.split(",") if d.strip()]
    if "mariadb" in dialects and mariadb_version(mysql_server) is None:
        raise click.UsageError(f"MariaDB does not answer at {mysql_server}; try --databases sqlite")
    # The code measured is the code at the start of the run.
    started_with = environment(mysql_server if "mariadb" in dialects else None)
    opts = {
        "sizes": size_list,
        "databases": dialects,
        "duration": duration,
        "warmup": warmup,
        "connections": connections,
        "workers": workers,
        "floor": floor,
        "seed": seed,
        "mysql_server": mysql_server,
    }
    run_dir = run_directory("identify")
    results = {}
    for dialect in dialects:
        bare = _bare_run(dialect, size_list[-1], run_dir, opts).as_dict()
        runs = [_identify_run(dialect, size, run_dir, opts) for size in size_list]
        results[dialect] = {"bare": bare, "identify": runs}
        if dialect == "sqlite" and opts["floor"]:
            results[dialect]["floor"] = _floor_run(size_list[0], run_dir, opts)
        for leftover in run_dir.glob("*.txt"):
            if not leftover.name.endswith(".wrk.txt"):
                leftover.unlink()
    data = {
        "environment": started_with,
        "settings": {k: v for k, v in opts.items() if k != "mysql_server"},
        "results": results,
    }
    data["verdicts"] = _verdicts(results)
    markdown = _markdown(data)
    json_path, md_path = write_report("identify", run_dir, data, markdown)
    click.echo(markdown)
    click.echo(f"written: {json_path} and {md_path}")


if __name__ == "__main__":
    main()
