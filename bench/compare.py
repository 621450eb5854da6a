"""sisy against RQ, Celery, Dramatiq and Huey: same machine, same Redis, same job, one run.

Run from the repository root with the benchmark virtualenv::

    python -m venv /work/.venv-bench
    /work/.venv-bench/bin/pip install -e ".[bench,postgres]"
    /work/.venv-bench/bin/python bench/compare.py            # 3 runs, all systems
    /work/.venv-bench/bin/python bench/compare.py --quick    # smoke test: small N, 1 run
    /work/.venv-bench/bin/python bench/compare.py --only sisy,huey

It starts a private ``redis-server`` on 127.0.0.1 (port 6390 unless told), a
fresh SQLite file and a PostgreSQL database ``sisy_bench`` (127.0.0.1:5432, user
``postgres``, trust auth) for sisy, then for each run and each system starts
``bench/comparison/bench_driver.py`` in a process of its own (a peer is imported
there and in its workers only). The driver's figures are gathered here: the
median and the range of the runs go into a table and a chart. See
bench/README.md for what each figure means.

Outputs: the raw figures as JSON and a markdown table under bench/results/;
for a full comparison (every system, not ``--quick``) also the reStructuredText
table ``docs/bench/results.inc`` and the chart ``docs/bench/chart.png`` that
docs/benchmarks.rst shows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, sys.path[0] is bench/: the private Redis helper lives in tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.redis_server import private_redis  # noqa: E402

HERE = ROOT / "bench" / "comparison"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "bench"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

#: name -> (driver module suffix, label, extra environment)
SYSTEMS: dict[str, tuple[str, str, dict[str, str]]] = {
    "sisy-sqlite": ("sisy", "sisy (SQLite)", {"BENCH_DB": "sqlite"}),
    "sisy-postgres": ("sisy", "sisy (PostgreSQL)", {"BENCH_DB": "postgres"}),
    "rq": ("rq", "RQ", {}),
    "celery": ("celery", "Celery", {}),
    "dramatiq": ("dramatiq", "Dramatiq", {}),
    "huey": ("huey", "Huey", {}),
}
CHOICES = [*SYSTEMS, "ceiling"]
#: The Python packages whose versions the report records.
PACKAGES = [
    "sisy",
    "Django",
    "channels",
    "channels-redis",
    "redis",
    "psycopg",
    "rq",
    "celery",
    "kombu",
    "dramatiq",
    "huey",
    "matplotlib",
]
#: The peers' import names, to refuse to start when one is missing.
PEER_MODULES = {"rq": "rq", "celery": "celery", "dramatiq": "dramatiq", "huey": "huey"}


@dataclass(frozen=True)
class Sizes:
    jobs: int
    latency_jobs: int
    memory_jobs: int
    ceiling_messages: int


FULL = Sizes(jobs=5000, latency_jobs=300, memory_jobs=10000, ceiling_messages=10000)
QUICK = Sizes(jobs=300, latency_jobs=30, memory_jobs=1000, ceiling_messages=2000)


# --------------------------------------------------------------------------- the world


@contextlib.contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """Database ``name``, created empty (dropped first if it exists) and dropped after."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"cannot reach PostgreSQL ({PG_ADMIN}): {exc}\n"
            "leave sisy-postgres out with --only, or start PostgreSQL"
        ) from None
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def driver_env(redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=pythonpath, BENCH_REDIS_URL=redis_url)
    env["DJANGO_SETTINGS_MODULE"] = "benchsite.settings"
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--verbosity", "0"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise SystemExit(f"migrate failed for {env.get('BENCH_DB')}:\n{completed.stderr[-3000:]}")


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append(os.getloadavg()[0])
            self._halt.wait(self.every)

    def stop(self) -> dict[str, float | int]:
        self._halt.set()
        self.join()
        samples = self.samples or [os.getloadavg()[0]]
        return {
            "samples": len(samples),
            "min": min(samples),
            "median": statistics.median(samples),
            "max": max(samples),
        }


# --------------------------------------------------------------------------- running


def run_driver(
    system: str, redis_url: str, extra: dict[str, str], sizes: Sizes, memory: bool
) -> dict[str, Any]:
    module, _, env_extra = SYSTEMS[system]
    with tempfile.TemporaryDirectory(prefix="benchcmp-") as tmp:
        out = Path(tmp) / "report.json"
        # fmt: off
        argv = [sys.executable, str(HERE / "bench_driver.py"), "--system", module,
                "--jobs", str(sizes.jobs), "--latency-jobs", str(sizes.latency_jobs),
                "--memory-jobs", str(sizes.memory_jobs if memory else 0), "--out", str(out)]
        # fmt: on
        env = driver_env(redis_url, {**env_extra, **extra})
        started = time.monotonic()
        returncode, output = run_child(argv, env, timeout=3600)
        if returncode != 0 or not out.exists():
            return {"error": output[-3000:].strip() or f"the driver exited with {returncode}"}
        report: dict[str, Any] = json.loads(out.read_text())
        report["elapsed_s"] = time.monotonic() - started
        return report


def run_child(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a driver; on timeout or Ctrl-C, SIGTERM it so that it stops its own workers."""
    with tempfile.TemporaryFile(mode="w+") as output:
        child = subprocess.Popen(argv, cwd=HERE, env=env, stdout=output, stderr=output, text=True)
        try:
            returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            output.write(f"\nno result within {timeout:.0f}s")
            returncode = -1
        finally:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        output.seek(0)
        return returncode, output.read()


def run_ceiling(redis_url: str, messages: int, layer: str) -> dict[str, Any]:
    # fmt: off
    argv = [sys.executable, str(HERE / "bench_ceiling.py"), "--url", redis_url,
            "--messages", str(messages), "--layer", layer]
    # fmt: on
    returncode, output = run_child(argv, driver_env(redis_url, {}), timeout=900)
    lines = output.strip().splitlines()
    if returncode != 0 or not lines:
        return {"error": output[-3000:].strip() or f"exited with {returncode}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        return {"error": output[-3000:].strip()}
    return result


#: Statements per figure of :func:`run_floor`.
FLOOR_STATEMENTS = 1000


def run_floor(pg_name: str, redis_url: str) -> dict[str, Any]:
    """What one PostgreSQL statement and one Redis command cost here, with no sisy at all.

    In this process, with psycopg 3 in autocommit mode (as sisy's worker and
    ``sisy.submit`` run): the mean time of a ``SELECT 1``, of a one-row
    ``INSERT`` committed durably, and of the same with ``synchronous_commit``
    off, over :data:`FLOOR_STATEMENTS` each, on a table made for it in the
    benchmark's database; and of a Redis ``PING``. The durable insert is the
    least a submit that must survive a crash can cost on this disk.
    """
    import psycopg
    import redis

    def mean_us(action: Callable[[int], Any]) -> float:
        for n in range(50):  # warm: connection, plans, caches
            action(n)
        began = time.perf_counter()
        for n in range(FLOOR_STATEMENTS):
            action(n)
        return (time.perf_counter() - began) / FLOOR_STATEMENTS * 1e6

    try:
        with psycopg.connect(PG_ADMIN, dbname=pg_name, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (n integer)")
            try:
                figures = {"pg_select_us": mean_us(lambda n: conn.execute("SELECT 1"))}

                def insert(n: int) -> Any:
                    return conn.execute("INSERT INTO bench_floor VALUES (%s)", (n,), prepare=True)

                figures["pg_insert_durable_us"] = mean_us(insert)
                conn.execute("SET synchronous_commit = off")
                figures["pg_insert_async_us"] = mean_us(insert)
            finally:
                conn.execute("DROP TABLE bench_floor")
        client = redis.Redis.from_url(redis_url)
        figures["redis_ping_us"] = mean_us(lambda n: client.ping())
        client.close()
    except Exception as exc:  # a figure of context: report it, go on
        return {"error": f"{type(exc).__name__}: {exc}"}
    return figures


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S} load {os.getloadavg()[0]:.2f}] {message}", flush=True)


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(redis_url: str, with_postgres: bool) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    import redis

    found["redis-server"] = str(redis.Redis.from_url(redis_url).info("server")["redis_version"])
    if with_postgres:
        import psycopg

        with psycopg.connect(PG_ADMIN) as conn:
            for name, setting in [
                ("postgresql", "server_version"),
                ("postgresql fsync", "fsync"),
                ("postgresql synchronous_commit", "synchronous_commit"),
            ]:
                row = conn.execute(f"SHOW {setting}").fetchone()
                found[name] = str(row[0]) if row else None
    return found


def sisy_source() -> dict[str, Any]:
    """Which sisy the drivers import (``PYTHONPATH`` may point at another checkout)."""
    env = driver_env("redis://unused", {})
    completed = subprocess.run(
        [sys.executable, "-c", "import sisy; print(sisy.__file__)"],
        cwd=HERE,  # as the drivers run: the working directory is not where sisy comes from
        env=env,
        capture_output=True,
        text=True,
    )
    path = Path(completed.stdout.strip()).parent.parent if completed.returncode == 0 else None
    info: dict[str, Any] = {"path": str(path) if path else None}
    if path is not None and (path / ".git").exists():
        rev = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "sisy"],
            capture_output=True,
            text=True,
        )
        info["commit"] = rev.stdout.strip() or None
        info["sisy_modified"] = bool(dirty.stdout.strip())
    return info


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    get: Callable[[dict[str, Any]], float | None]
    #: "higher" or "lower": which way is better (kept in the JSON summary).
    better: str


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 1024 / 1024


METRICS = [
    Metric(
        "w1_k1_wall",
        "W1 drain, 1 worker: jobs/s from launch",
        lambda r: r["drain_k1"]["wall_jobs_per_s"],
        "higher",
    ),
    Metric(
        "w1_k1_steady",
        "W1 drain, 1 worker: jobs/s steady",
        lambda r: r["drain_k1"]["steady_jobs_per_s"],
        "higher",
    ),
    Metric(
        "w1_k2_wall",
        "W1 drain, 2 workers: jobs/s from launch",
        lambda r: r["drain_k2"]["wall_jobs_per_s"],
        "higher",
    ),
    Metric(
        "w1_k2_steady",
        "W1 drain, 2 workers: jobs/s steady",
        lambda r: r["drain_k2"]["steady_jobs_per_s"],
        "higher",
    ),
    Metric(
        "w2_start_p50",
        "W2 submit to start, p50 ms",
        lambda r: r["latency"]["start_ms_p50"],
        "lower",
    ),
    Metric(
        "w2_start_p99",
        "W2 submit to start, p99 ms",
        lambda r: r["latency"]["start_ms_p99"],
        "lower",
    ),
    Metric(
        "w2_result_p50",
        "W2 submit to result, p50 ms",
        lambda r: r["latency"]["result_ms_p50"],
        "lower",
    ),
    Metric(
        "w2_result_p99",
        "W2 submit to result, p99 ms",
        lambda r: r["latency"]["result_ms_p99"],
        "lower",
    ),
    Metric(
        "w3_submit",
        "W3 submit, µs per call",
        lambda r: r["submit_us_per_call"],
        "lower",
    ),
    Metric(
        "w3_bulk",
        "W3 bulk submit, µs per job",
        lambda r: r["bulk_us_per_job"],
        "lower",
    ),
    Metric(
        "rss_drain",
        "Worker RSS after W1, MiB",
        lambda r: _mib(r["drain_k1"]["worker_rss_bytes"]),
        "lower",
    ),
]
MEMORY_METRICS = [
    Metric(
        "rss_100",
        "sisy worker RSS after its first 100 jobs, MiB",
        lambda r: _mib(r["memory"]["rss_after_100_bytes"]),
        "lower",
    ),
    Metric(
        "rss_all",
        "sisy worker RSS after {memory_jobs:,} jobs, MiB",
        lambda r: _mib(r["memory"]["rss_after_all_bytes"]),
        "lower",
    ),
]


def values_of(runs: list[dict[str, Any]], system: str, metric: Metric) -> list[float]:
    found = []
    for run in runs:
        report = run["systems"].get(system)
        if not report or "error" in report:
            continue
        try:
            value = metric.get(report)
        except (KeyError, TypeError):
            continue
        if value is not None:
            found.append(float(value))
    return found


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(stats: dict[str, float] | None, runs: int) -> str:
    if stats is None:
        return "n/a"
    if runs <= 1 or stats["min"] == stats["max"]:
        return number(stats["median"])
    return f"{number(stats['median'])} ({number(stats['min'])}-{number(stats['max'])})"


def aggregate(report: dict[str, Any]) -> dict[str, Any]:
    runs = report["runs"]
    systems = report["selected_systems"]
    table: dict[str, Any] = {}
    for metric in METRICS:
        table[metric.key] = {s: summary(values_of(runs, s, metric)) for s in systems}
    memory = {}
    for metric in MEMORY_METRICS:
        memory[metric.key] = {
            s: summary(values_of(runs, s, metric)) for s in systems if s.startswith("sisy")
        }
    ceiling = {
        f"{key}{suffix}": summary([r[run_key][key] for r in runs if r.get(run_key, {}).get(key)])
        for run_key, suffix in (("ceiling", ""), ("ceiling_sisy", "_sisy"))
        for key in ("end_to_end_per_s", "send_per_s")
    }
    floor = {
        key: summary([r["floor"][key] for r in runs if r.get("floor", {}).get(key)])
        for key, _ in FLOOR_LABELS
    }
    metrics = {m.key: {"label": m.label, "better": m.better} for m in METRICS + MEMORY_METRICS}
    return {
        "metrics": metrics,
        "table": table,
        "memory": memory,
        "ceiling": ceiling,
        "floor": floor,
    }


#: run_floor's figures, as the sisy-only table names them.
FLOOR_LABELS = [
    ("pg_select_us", "Floor: PostgreSQL SELECT 1 (a round trip), µs"),
    ("pg_insert_durable_us", "Floor: PostgreSQL one-row INSERT, durable commit, µs"),
    ("pg_insert_async_us", "Floor: PostgreSQL one-row INSERT, synchronous_commit off, µs"),
    ("redis_ping_us", "Floor: Redis PING, µs"),
]


# --------------------------------------------------------------------------- writing


def rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main table: a header, then one row per figure."""
    systems = report["selected_systems"]
    count = len(report["runs"])
    header = ["Figure", *(SYSTEMS[s][1] for s in systems)]
    body = []
    for metric in METRICS:
        stats = report["summary"]["table"][metric.key]
        body.append([metric.label, *(cell(stats[s], count) for s in systems)])
    return header, body


def extra_rows(report: dict[str, Any]) -> list[list[str]]:
    """sisy-only figures: memory over many jobs, the channel layer's ceiling, the floors."""
    count = len(report["runs"])
    out = []
    for metric in MEMORY_METRICS:
        label = metric.label.format(memory_jobs=report["sizes"]["memory_jobs"])
        for system, stats in report["summary"]["memory"].get(metric.key, {}).items():
            if stats is None:
                continue
            once = " (measured in run 1 only)" if count > 1 else ""
            out.append([f"{label}, {SYSTEMS[system][1]}{once}", cell(stats, 1)])
    ceiling = report["summary"]["ceiling"]
    messages = report["sizes"]["ceiling_messages"]
    for suffix, name in (("", "channels-redis's layer"), ("_sisy", "sisy.layers")):
        if not ceiling.get(f"end_to_end_per_s{suffix}"):
            continue
        out.append(
            [
                f"Ceiling: {name}, 2 processes, {messages:,} messages: messages/s",
                cell(ceiling[f"end_to_end_per_s{suffix}"], count),
            ]
        )
        out.append(
            [
                f"Ceiling: {name}, the sender alone, messages/s",
                cell(ceiling[f"send_per_s{suffix}"], count),
            ]
        )
    floor = report["summary"].get("floor", {})
    for key, label in FLOOR_LABELS:
        if floor.get(key):
            out.append([label, cell(floor[key], count)])
    return out


def context_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    v = report["versions"]
    load = report["load"]
    sizes = report["sizes"]
    peers = ", ".join(f"{p} {v.get(p)}" for p in PACKAGES if v.get(p) and p != "sisy")
    src = report["sisy_source"]
    postgres = "not used"
    if v.get("postgresql"):
        postgres = (
            f"{v['postgresql']} (fsync {v.get('postgresql fsync')}, "
            f"synchronous_commit {v.get('postgresql synchronous_commit')})"
        )
    sisy = f"sisy {v.get('sisy')}"
    if src.get("commit"):
        sisy += f" (commit {src['commit']}{', modified' if src.get('sisy_modified') else ''})"
    elif src.get("path"):
        sisy += f" (from {src['path']})"
    return [
        f"Measured {report['started']} in {report['elapsed_s'] / 60:.1f} min, "
        f"{len(report['runs'])} run(s); cells are the median (min-max). Higher is better for "
        "jobs/s and messages/s, lower for ms, µs and MiB.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"load average (1 min) during the run: median {load['median']:.2f}, "
        f"max {load['max']:.2f}.",
        f"Python {m['python']}, Redis {v.get('redis-server')}, "
        f"PostgreSQL {postgres}; {sisy}; {peers}.",
        f"Sizes: W1 {sizes['jobs']:,} jobs, W2 {sizes['latency_jobs']:,} jobs, "
        f"W3 {sizes['jobs']:,} calls.",
    ]


def bulk_note(report: dict[str, Any]) -> str:
    apis = []
    for system in report["selected_systems"]:
        found = [
            r["systems"][system].get("bulk_api")
            for r in report["runs"]
            if r["systems"].get(system) and "error" not in r["systems"][system]
        ]
        api = found[0] if found else None
        apis.append(f"{SYSTEMS[system][1]}: {api or 'none (n/a)'}")
    return "Bulk submit used: " + "; ".join(apis) + "."


def gist(error: str) -> str:
    """The line of a driver's output that says what went wrong.

    The driver's own message (``"<system>: ..."``) if there is one, else the
    exception line that ends a traceback, else the last line.
    """
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    systems = {module for module, _, _ in SYSTEMS.values()}
    for line in lines:
        if line.split(":", 1)[0] in systems:
            return line[:300]
    for line in reversed(lines):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line):
            return line[:300]
    return (lines[-1] if lines else "?")[:300]


def errors(report: dict[str, Any]) -> list[str]:
    found = []
    for index, run in enumerate(report["runs"], 1):
        for system, result in run["systems"].items():
            if "error" in result:
                found.append(f"run {index}, {SYSTEMS[system][1]}: {gist(result['error'])}")
        for key in ("ceiling", "ceiling_sisy", "floor"):
            if "error" in run.get(key, {}):
                found.append(f"run {index}, {key}: {gist(run[key]['error'])}")
    return found


def markdown(report: dict[str, Any]) -> str:
    header, body = rows(report)
    lines = ["# sisy and its peers: comparison", ""]
    lines += [f"{line}  " for line in context_lines(report)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", bulk_note(report), ""]
    extra = extra_rows(report)
    if extra:
        lines += ["| sisy only | |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in extra]
        lines.append("")
    problems = errors(report)
    if problems:
        lines += ["Failures:", "", *(f"- {p}" for p in problems), ""]
    return "\n".join(lines)


def rst_table(header: list[str], body: list[list[str]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *body]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {value}" for value in row[1:]]
    return lines


def rst(report: dict[str, Any]) -> str:
    header, body = rows(report)
    lines = [
        ".. This file is written by bench/compare.py; do not edit it by hand.",
        "",
    ]
    lines += [f"| {line}" for line in context_lines(report)]
    lines.append("")
    widths = " ".join(["28"] + ["12"] * (len(header) - 1))
    lines += rst_table(header, body, widths)
    lines += ["", bulk_note(report), ""]
    extra = extra_rows(report)
    if extra:
        lines += rst_table(["sisy only", "Value"], extra, "70 30")
        lines.append("")
    problems = errors(report)
    if problems:
        lines += ["Failures in this run:", "", *(f"* {p}" for p in problems), ""]
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["selected_systems"]
    labels = [SYSTEMS[s][1].replace(" (", "\n(") for s in systems]
    table = report["summary"]["table"]
    panels = [
        ("W1 drain: jobs/s, first to last completion", ["w1_k1_steady", "w1_k2_steady"],
         ["1 worker", "2 workers"], False),
        ("W1 drain: jobs/s from worker launch", ["w1_k1_wall", "w1_k2_wall"],
         ["1 worker", "2 workers"], False),
        ("W2 latency: submit to job start (ms, log)", ["w2_start_p50", "w2_start_p99"],
         ["p50", "p99"], True),
        ("W3 submit cost (µs per job)", ["w3_submit", "w3_bulk"],
         ["one call per job", "bulk"], False),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    width = 0.38
    for ax, (title, keys, names, log_scale) in zip(axes.flat, panels, strict=False):
        for index, (key, name) in enumerate(zip(keys, names, strict=True)):
            medians, low, high = [], [], []
            for system in systems:
                stats = table[key][system]
                if stats is None:
                    medians.append(0.0)
                    low.append(0.0)
                    high.append(0.0)
                else:
                    medians.append(stats["median"])
                    low.append(stats["median"] - stats["min"])
                    high.append(stats["max"] - stats["median"])
            positions = [i + (index - 0.5) * width for i in range(len(systems))]
            bars = ax.bar(positions, medians, width, yerr=[low, high], capsize=3, label=name)
            for bar, value, above in zip(bars, medians, high, strict=True):
                ax.annotate(  # above the whisker, so that the two never overlap
                    number(value) if value else "n/a",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height() + above),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(labels, fontsize=8)
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    m = report["machine"]
    fig.suptitle(
        f"sisy and its peers, {m['cores']} cores ({m['cpu']}), median of "
        f"{len(report['runs'])} run(s) (whiskers: min-max)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes and 1 run: a smoke test")
    parser.add_argument(
        "--only",
        help=f"comma-separated subset of {', '.join(CHOICES)}; 'sisy' means both sisy databases",
    )
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--pg-database", default="sisy_bench")
    parser.add_argument("--jobs", type=int, help="W1/W3 jobs (5,000; 300 with --quick)")
    parser.add_argument("--latency-jobs", type=int, help="W2 jobs (300; 30 with --quick)")
    parser.add_argument(
        "--memory-jobs", type=int, help="sisy memory workload jobs (10,000; 1,000 with --quick)"
    )
    parser.add_argument(
        "--ceiling-messages", type=int, help="ceiling messages (10,000; 2,000 with --quick)"
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write docs/bench/ even for a full run"
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the table and chart again from a saved report",
    )
    args = parser.parse_args(argv)
    selected: list[str] = []
    for name in (args.only or ",".join(CHOICES)).split(","):
        name = name.strip()
        names = ["sisy-sqlite", "sisy-postgres"] if name == "sisy" else [name]
        for each in names:
            if each not in CHOICES:
                parser.error(f"--only: unknown system {each!r}; choose from {', '.join(CHOICES)}")
            if each not in selected:
                selected.append(each)
    args.selected = [name for name in CHOICES if name in selected]  # always the same order
    base = QUICK if args.quick else FULL

    def given(value: int | None, default: int) -> int:
        return default if value is None else value

    args.sizes = Sizes(
        jobs=given(args.jobs, base.jobs),
        latency_jobs=given(args.latency_jobs, base.latency_jobs),
        memory_jobs=given(args.memory_jobs, base.memory_jobs),
        ceiling_messages=given(args.ceiling_messages, base.ceiling_messages),
    )
    args.runs = given(args.runs, 1 if args.quick else 3)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.sizes.jobs < 2:
        parser.error("--jobs must be at least 2")
    if args.sizes.latency_jobs < 1:
        parser.error("--latency-jobs must be at least 1")
    if args.sizes.ceiling_messages < 1:
        parser.error("--ceiling-messages must be at least 1")
    if args.sizes.memory_jobs and args.sizes.memory_jobs <= 100:
        parser.error("--memory-jobs must be above 100 (or 0 to skip the memory workload)")
    return args


def check_installed(selected: list[str]) -> None:
    missing = [
        module
        for name, module in PEER_MODULES.items()
        if name in selected and importlib.util.find_spec(module) is None
    ]
    for module in ("matplotlib", "psutil", "redis", "channels_redis"):
        if importlib.util.find_spec(module) is None:
            missing.append(module)
    if any(s == "sisy-postgres" for s in selected) and importlib.util.find_spec("psycopg") is None:
        missing.append("psycopg")
    if missing:
        raise SystemExit(
            f"missing: {', '.join(missing)}; install the bench extra: "
            f'pip install -e "{ROOT}[bench,postgres]"'
        )


def write_outputs(report: dict[str, Any], tag: str, docs: bool) -> None:
    """The raw JSON and the markdown table under bench/results/; the docs' table and chart."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{tag}.md").write_text(markdown(report))
    written = [RESULTS / f"{tag}.json", RESULTS / f"{tag}.md"]
    if docs:
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "results.inc").write_text(rst(report))
        chart(report, DOCS / "chart.png")
        written += [DOCS / "results.inc", DOCS / "chart.png"]
    else:
        chart(report, RESULTS / f"{tag}.png")
        written.append(RESULTS / f"{tag}.png")
    print()
    print(markdown(report))
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")


def render(path: Path, no_docs: bool) -> int:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--render: cannot read {path}: {exc}") from None
    report["summary"] = aggregate(report)
    tag = path.stem
    write_outputs(report, tag, docs=tag == "compare" and not no_docs)
    return 1 if errors(report) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render, args.no_docs)
    check_installed(args.selected)
    # A SIGTERM unwinds like Ctrl-C: drivers stop their workers, Redis and the database go.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    systems = [s for s in args.selected if s in SYSTEMS]
    full = not args.quick and set(args.selected) == set(CHOICES)
    tag = "compare" if full else ("compare-quick" if args.quick else "compare-partial")
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    sampler = LoadSampler()
    sampler.start()
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        try:
            redis_url = stack.enter_context(private_redis(args.redis_port))
        except RuntimeError as exc:
            raise SystemExit(f"{exc} (choose another port with --redis-port)") from None
        log(f"redis-server on {redis_url}")
        extra: dict[str, dict[str, str]] = {s: {} for s in systems}
        if "sisy-sqlite" in systems:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="benchcmp-db-"))
            extra["sisy-sqlite"] = {"BENCH_SQLITE_PATH": str(Path(workdir) / "bench.sqlite3")}
        if "sisy-postgres" in systems:
            name = stack.enter_context(postgres_database(args.pg_database))
            extra["sisy-postgres"] = {"BENCH_PG_NAME": name}
        for system in systems:
            if system.startswith("sisy"):
                migrate(driver_env(redis_url, {**SYSTEMS[system][2], **extra[system]}))
        report: dict[str, Any] = {
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["bench/compare.py", *(argv or sys.argv[1:])]),
            "machine": machine(),
            "versions": versions(redis_url, "sisy-postgres" in systems),
            "sisy_source": sisy_source(),
            "sizes": vars(args.sizes),
            "selected_systems": systems,
        }
        memory_system = next((s for s in systems if s.startswith("sisy")), None)
        for index in range(args.runs):
            run: dict[str, Any] = {"systems": {}}
            for system in systems:
                # The memory workload is long and steady: once, in the first run, on the
                # first sisy database selected (SQLite unless it is left out).
                memory = system == memory_system and index == 0 and args.sizes.memory_jobs > 0
                log(f"run {index + 1}/{args.runs}: {SYSTEMS[system][1]}")
                result = run_driver(system, redis_url, extra[system], args.sizes, memory)
                if "error" in result:
                    log(f"  FAILED: {gist(result['error'])}")
                else:
                    log(f"  done in {result['elapsed_s']:.0f}s")
                run["systems"][system] = result
            if "sisy-postgres" in systems:
                run["floor"] = run_floor(extra["sisy-postgres"]["BENCH_PG_NAME"], redis_url)
            if "ceiling" in args.selected:
                log(f"run {index + 1}/{args.runs}: ceiling")
                run["ceiling"] = run_ceiling(redis_url, args.sizes.ceiling_messages, "core")
                run["ceiling_sisy"] = run_ceiling(redis_url, args.sizes.ceiling_messages, "sisy")
            runs.append(run)
    report["runs"] = runs
    report["load"] = sampler.stop()
    report["elapsed_s"] = time.monotonic() - clock
    report["summary"] = aggregate(report)

    write_outputs(report, tag, docs=full and not args.no_docs)
    return 1 if errors(report) else 0


if __name__ == "__main__":
    sys.exit(main())
