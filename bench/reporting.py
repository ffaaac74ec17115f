"""What every benchmark report records: the machine, the code, and where results go."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).with_name("results")


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return (result.stdout or result.stderr).strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def mariadb_version(server_url: str) -> str | None:
    """The MariaDB server's version string, or None when it does not answer."""
    engine = sa.create_engine(server_url.rstrip("/") + "/")
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT VERSION()").scalar_one()
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


def environment(mysql_server: str | None = None) -> dict:
    """The machine, software versions and commit a run measured."""
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--", "webapp", "migrations", "wsgi.py"]))
    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + ("+uncommitted changes" if dirty else ""),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }
    if mysql_server:
        info["mariadb"] = mariadb_version(mysql_server)
    return info


def latency_stats(ms: list[float]) -> dict:
    """Sample count, median, 99th percentile (nearest rank) and maximum of timings in ms."""
    ordered = sorted(ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ordered[-1], 2),
    }


def run_directory(name: str) -> Path:
    """A fresh folder under bench/results for one run's files."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_report(name: str, run_dir: Path, data: dict, markdown: str) -> tuple[Path, Path]:
    """Write the JSON and Markdown summaries into the run's folder and as '<name>-latest'."""
    payload = json.dumps(data, indent=2) + "\n"
    paths = []
    for folder, stem in ((run_dir, "summary"), (RESULTS, f"{name}-latest")):
        json_path = folder / f"{stem}.json"
        md_path = folder / f"{stem}.md"
        json_path.write_text(payload)
        md_path.write_text(markdown)
        paths.append((json_path, md_path))
    return paths[0]


def environment_markdown(env: dict) -> str:
    """The environment as a Markdown list."""
    lines = [f"- {key}: {value}" for key, value in env.items()]
    return "\n".join(lines) + "\n"
