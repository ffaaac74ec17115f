"""Serving an app with gunicorn on loopback and driving it with wrk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).with_name("mix.lua")
HOST = "127.0.0.1"


@dataclass
class LoadResult:
    """One wrk run: throughput, latency and every status that came back."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    sent: dict[str, int]
    wrapped: int
    # 1-minute load average before the warm-up and after the run, when recorded.
    load_average: tuple[float, float] | None = None
    # CPU time (user + system) the gunicorn workers spent per request, when recorded.
    worker_cpu_ms: float | None = None

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def non_2xx(self) -> int:
        """Responses whose status was not 2xx, plus requests that got no response."""
        bad = sum(n for status, n in self.statuses.items() if not status.startswith("2"))
        return bad + self.socket_errors.get("timeout", 0) + self.socket_errors.get("read", 0)

    def as_dict(self) -> dict:
        """The figures as plain JSON data."""
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "non_2xx": self.non_2xx,
            "statuses": self.statuses,
            "socket_errors": self.socket_errors,
            "sent": self.sent,
            "wrapped": self.wrapped,
            "load_average": self.load_average,
            "worker_cpu_ms": self.worker_cpu_ms,
        }


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")


@dataclass
class Server:
    """A gunicorn serving on loopback: its base URL and its master process."""

    url: str
    pid: int

    def worker_cpu_seconds(self) -> float:
        """User plus system CPU time used so far by the master's worker processes (Linux)."""
        total = 0
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        for child in children.read_text().split():
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            # utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def gunicorn(
    app: str, env: dict[str, str], workers: int, log_path: Path, pythonpath: Path | None = None
) -> Iterator[Server]:
    """Serve ``app`` ('module:variable') with ``workers`` sync workers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(workers),
        "--bind",
        f"{HOST}:{port}",
        # Room for every connection wrk opens while the workers are busy.
        "--backlog",
        "2048",
    ]
    if pythonpath is not None:
        command += ["--pythonpath", str(pythonpath)]
    command.append(app)
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        base = f"http://{HOST}:{port}"
        try:
            _wait_ready(f"{base}/healthz", process)
            yield Server(base, process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_wrk(
    base_url: str,
    bodies: Path,
    out_dir: Path,
    *,
    label: str,
    duration: int,
    connections: int,
    threads: int = 1,
) -> LoadResult:
    """Replay ``bodies`` against ``base_url`` for ``duration`` seconds; wrk stops by itself."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk)")
    summary_path = out_dir / f"{label}.wrk.json"
    summary_path.unlink(missing_ok=True)
    env = dict(os.environ, BENCH_WRK_OUT=str(summary_path))
    command = [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration}s",
        "--timeout=10s",
        f"--script={LUA_SCRIPT}",
        base_url,
        "--",
        str(bodies),
        str(threads),
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    (out_dir / f"{label}.wrk.txt").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not summary_path.exists():
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr[-2000:]}")
    data = json.loads(summary_path.read_text())
    latency = data["latency_us"]
    errors = data["errors"]
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        statuses={str(k): v for k, v in data["statuses"].items()},
        socket_errors={k: v for k, v in errors.items() if k != "status"},
        sent=data["sent"],
        wrapped=data["wrapped"],
    )
