"""A/B drains: sisy's backlog pace and CPU per job under database variants.

Run from the repository root with the benchmark virtualenv::

    /work/.venv-bench/bin/python bench/drain_ab.py --db postgres --workers 2 \\
        --variants default,prepared,async-commit --runs 2

Each run submits ``--jobs`` of the benchmark's jobs (bench/comparison) with
``sisy.submit_many``, starts ``--workers`` ``sisy_worker`` processes, and
times them from launch until every job has recorded its run; the variants
take turns within a run, so that a machine growing busier or quieter affects
them alike. Besides jobs a second it reports the CPU time per job of the
workers, of the PostgreSQL server's processes (all of them, from /proc) and
of the private Redis. The variants (PostgreSQL only, but ``default``):

``default``
    the benchmark's settings (docs/benchmarks.rst);
``prepared``
    psycopg's server-side binding, statements prepared on their second run
    (``OPTIONS = {"server_side_binding": True, "prepare_threshold": 2}``);
``async-commit``
    ``synchronous_commit = off`` for the workers' connections only
    (``PGOPTIONS``), as docs/topics/deployment.rst describes.

It prints a markdown table; docs/topics/deployment.rst quotes its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (bench/compare.py: Redis, database, environment)

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "prepared": {"BENCH_PG_PREPARED": "1"},
    "async-commit": {"PGOPTIONS": "-c synchronous_commit=off"},
}

#: Submits the jobs (a child process: Django set up with the benchmark's settings).
FILL = """
import sys
import django
django.setup()
from bench_sisy import Adapter
from sisy import dispatch
adapter = Adapter()
adapter.reset()
adapter.submit_bulk(list(range(int(sys.argv[1]))))
dispatch.flush()
"""


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User and system CPU seconds of each process still there."""
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def server_pids() -> list[int]:
    return [*pids_of("postgres:"), *pids_of("postgres -D")]


def pids_of(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def drain(
    env: dict[str, str], variant: dict[str, str], jobs: int, workers: int
) -> dict[str, float | None]:
    """One timed drain; the workers get ``variant`` in their environment."""
    import redis

    client = redis.Redis.from_url(env["BENCH_REDIS_URL"])
    subprocess.run([sys.executable, "-c", FILL, str(jobs)], cwd=compare.HERE, env=env, check=True)
    client.flushdb()  # the wake-ups: the workers drain the backlog from the database
    port = client.connection_pool.connection_kwargs["port"]
    redis_pids = pids_of(f"redis-server 127.0.0.1:{port}")
    server_before, redis_before = cpu_seconds(server_pids()), cpu_seconds(redis_pids)
    argv = [sys.executable, "-m", "django", "sisy_worker", "--verbosity", "0"]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(argv, cwd=compare.HERE, env={**env, **variant}) for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 600
        while client.llen("bench:done") < jobs:
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not finish within 10 minutes")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        worker_cpu = sum(cpu_seconds([p.pid for p in processes]).values())
        server_cpu = spent(server_before, cpu_seconds(server_pids()))
        redis_cpu = spent(redis_before, cpu_seconds(redis_pids))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    return {
        "jobs_per_s": jobs / elapsed,
        "worker_us": worker_cpu / jobs * 1e6,
        "server_us": server_cpu / jobs * 1e6 if env["BENCH_DB"] == "postgres" else None,
        "redis_us": redis_cpu / jobs * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--variants", default="default")
    parser.add_argument("--pg-database", default="sisy_drain_ab")
    args = parser.parse_args()
    names = [name.strip() for name in args.variants.split(",")]
    for name in names:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        if name != "default" and args.db != "postgres":
            parser.error(f"{name} is a PostgreSQL variant")
    results: dict[str, list[dict[str, float | None]]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(compare.private_redis())
        extra = {"BENCH_DB": args.db}
        if args.db == "postgres":
            extra["BENCH_PG_NAME"] = stack.enter_context(
                compare.postgres_database(args.pg_database)
            )
        else:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="drain-ab-"))
            extra["BENCH_SQLITE_PATH"] = str(Path(workdir) / "bench.sqlite3")
        env = compare.driver_env(redis_url, extra)
        compare.migrate(env)
        for run in range(args.runs):
            for name in names:
                result = drain(env, VARIANTS[name], args.jobs, args.workers)
                results[name].append(result)
                compare.log(f"run {run + 1}/{args.runs}, {name}: {result['jobs_per_s']:.0f} jobs/s")
    print(
        f"\n{args.jobs:,} jobs, {args.workers} worker(s), {args.db}, {args.runs} run(s); "
        "median (min-max); CPU µs per job\n"
    )
    print("| variant | jobs/s from launch | workers CPU | PostgreSQL CPU | Redis CPU |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        cells = []
        for key in ("jobs_per_s", "worker_us", "server_us", "redis_us"):
            values = [value for r in runs if (value := r[key]) is not None]
            if not values:
                cells.append("n/a")
                continue
            median = statistics.median(values)
            cells.append(f"{median:,.0f} ({min(values):,.0f}-{max(values):,.0f})")
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
