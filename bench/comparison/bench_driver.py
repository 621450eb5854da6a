"""Run every workload against one system and print the figures as JSON.

bench/compare.py starts this once per system and run, in a process of its own,
so a peer's library is imported only here and in that peer's workers::

    python bench_driver.py --system rq --jobs 5000 --latency-jobs 300 --out rq.json

The driver submits the jobs, starts the system's own worker processes (with
the system's own command line), waits for the jobs to finish, checks every
result, stops the workers by pid and reports. Each workload starts from an empty
Redis (and, for sisy, empty job tables).

Workloads, in this order:

- ``drain_k1``: submit ``--jobs`` jobs one call at a time with no worker
  running (the time per call is the *submit* figure), then start one worker and
  wait until every job is done.
- ``drain_k2``: the same with the system's bulk submit when it has one (timed:
  the *bulk* figure), else one call at a time again, then two workers.
- ``latency``: one worker, already idle; ``--latency-jobs`` jobs one after the
  other, each submitted once the previous one's result could be read.
- ``memory`` (sisy only, with ``--memory-jobs``): one worker's resident size
  after its first 100 jobs and after ``--memory-jobs`` jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common
import psutil

HERE = Path(__file__).resolve().parent
#: Seconds between two looks at a result while measuring latency.
LATENCY_POLL = 0.0005
#: Seconds between two looks at the completion list while a queue drains.
DRAIN_POLL = 0.02
#: Longest wait for a drain before the run is declared failed.
DRAIN_DEADLINE = 900.0
#: Longest wait for a worker to run its first job.
READY_DEADLINE = 120.0


class BenchError(Exception):
    """A workload did not do what it must (a job lost, a wrong result, a dead worker)."""


# --------------------------------------------------------------------------- workers


class Workers:
    """Worker processes of one system, each in its own session so it is stopped whole."""

    def __init__(self, argv: list[str], count: int, logdir: Path, label: str) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        env = dict(os.environ, PYTHONPATH=_pythonpath(), PYTHONUNBUFFERED="1")
        for index in range(count):
            log = logdir / f"{label}-worker{index}.log"
            with log.open("wb") as stream:
                process = subprocess.Popen(
                    argv,
                    cwd=HERE,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append(process)
            self.logs.append(log)

    def log_tail(self, size: int = 3000) -> str:
        return "\n".join(log.read_text(errors="replace")[-size:] for log in self.logs)

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise BenchError(f"worker {process.args} exited ({process.returncode}):\n{tail}")

    def rss(self) -> int:
        """Resident bytes of all worker processes and their children."""
        total = 0
        for process in self.processes:
            try:
                root = psutil.Process(process.pid)
                for proc in [root, *root.children(recursive=True)]:
                    total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        for process in self.processes:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(5)
        # Children a worker forked (Dramatiq's worker process) share its session.
        for process in self.processes:
            _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _pythonpath() -> str:
    parts = [str(HERE), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def vm_rss(pid: int) -> int:
    """VmRSS of one process, in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- helpers


def empty_redis() -> None:
    bench_common.client().flushdb()


def done_count() -> int:
    return int(bench_common.client().llen(bench_common.DONE_KEY))


def done_records() -> list[tuple[int, float, float]]:
    """``(n, start, end)`` of every job run so far, in completion order."""
    raw = bench_common.client().lrange(bench_common.DONE_KEY, 0, -1)
    records = []
    for item in raw:
        n, start, end = item.decode().split()
        records.append((int(n), float(start), float(end)))
    return records


def wait_done(count: int, workers: Workers, deadline: float) -> None:
    """Until the job function has run ``count`` times; fail if a worker died or time ran out."""
    limit = time.monotonic() + deadline
    while done_count() < count:
        workers.check_alive()
        if time.monotonic() > limit:
            raise BenchError(
                f"only {done_count()} of {count} jobs ran in {deadline:.0f}s; worker logs:\n"
                + workers.log_tail()
            )
        time.sleep(DRAIN_POLL)


def check_results(adapter: Any, handles: list[Any], values: list[int]) -> None:
    """Every job's stored result equals its ``n``: waits a little for the last ones."""
    limit = time.monotonic() + 30
    bulk_reader: Callable[[], dict[Any, Any]] | None = getattr(adapter, "results", None)
    pending = list(zip(handles, values, strict=True))
    while True:
        if bulk_reader is not None:  # handles are hashable ids there
            stored = bulk_reader()
            wrong = [h for h, v in pending if stored.get(h) != v]
        else:
            still = []
            for handle, value in pending:
                ok, result = adapter.result(handle)
                if not ok or result != value:
                    still.append((handle, value))
            pending = still
            wrong = [h for h, _ in pending]
        if not wrong:
            return
        if time.monotonic() > limit:
            raise BenchError(f"{len(wrong)} of {len(handles)} results missing or wrong")
        time.sleep(0.1)


def submit_single(adapter: Any, values: list[int]) -> tuple[list[Any], float]:
    submit = adapter.submit
    started = time.perf_counter()
    handles = [submit(n) for n in values]
    return handles, time.perf_counter() - started


def submit_bulk(adapter: Any, values: list[int]) -> tuple[list[Any], float] | None:
    if adapter.bulk_api is None:
        return None
    started = time.perf_counter()
    handles = adapter.submit_bulk(values)
    elapsed = time.perf_counter() - started
    if len(handles) != len(values):
        raise BenchError(f"bulk submit returned {len(handles)} handles for {len(values)} jobs")
    return handles, elapsed


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation, as numpy's default does."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------- workloads


def drain(
    adapter: Any, handles: list[Any], values: list[int], k: int, logdir: Path, label: str
) -> dict[str, Any]:
    """Start ``k`` workers on a full queue; time until every job ran."""
    launched = time.time()
    workers = Workers(adapter.worker_argv(), k, logdir, label)
    try:
        wait_done(len(values), workers, DRAIN_DEADLINE)
        check_results(adapter, handles, values)
        rss = workers.rss()
    finally:
        workers.stop()
    records = done_records()
    ran = [n for n, _, _ in records]
    if sorted(set(ran)) != sorted(values):
        raise BenchError(f"{label}: the jobs that ran are not the jobs submitted")
    ends = sorted(end for _, _, end in records)
    first, last = ends[0], ends[-1]
    return {
        "jobs": len(values),
        "workers": k,
        "duplicates": len(ran) - len(set(ran)),
        "wall_jobs_per_s": len(values) / (last - launched),
        "steady_jobs_per_s": (len(values) - 1) / (last - first) if last > first else None,
        "first_done_after_s": first - launched,
        "worker_rss_bytes": rss,
    }


def latency(adapter: Any, count: int, logdir: Path, label: str) -> dict[str, Any]:
    """One idle worker, ``count`` jobs one after the other."""
    workers = Workers(adapter.worker_argv(), 1, logdir, label)
    try:
        warm = adapter.submit(count + 1)
        limit = time.monotonic() + READY_DEADLINE
        while not adapter.result(warm)[0]:
            workers.check_alive()
            if time.monotonic() > limit:
                raise BenchError(
                    f"{label}: the worker ran no job in {READY_DEADLINE:.0f}s; its log:\n"
                    + workers.log_tail()
                )
            time.sleep(0.01)
        time.sleep(0.5)  # the worker is idle, waiting for work
        submitted: dict[int, float] = {}
        finished: dict[int, float] = {}
        for n in range(count):
            submitted[n] = time.time()
            handle = adapter.submit(n)
            limit = time.monotonic() + 60
            while True:
                ok, value = adapter.result(handle)
                if ok:
                    break
                if time.monotonic() > limit:
                    workers.check_alive()
                    raise BenchError(f"{label}: job {n} not done within 60s")
                time.sleep(LATENCY_POLL)
            finished[n] = time.time()
            if value != n:
                raise BenchError(f"{label}: job {n} returned {value!r}")
    finally:
        workers.stop()
    started = {n: start for n, start, _ in done_records() if n in submitted}
    to_start = [(started[n] - submitted[n]) * 1000 for n in range(count)]
    to_result = [(finished[n] - submitted[n]) * 1000 for n in range(count)]
    return {
        "jobs": count,
        "start_ms_p50": percentile(to_start, 0.50),
        "start_ms_p99": percentile(to_start, 0.99),
        "result_ms_p50": percentile(to_result, 0.50),
        "result_ms_p99": percentile(to_result, 0.99),
        "result_ms_mean": statistics.fmean(to_result),
    }


def memory(adapter: Any, total: int, logdir: Path, label: str) -> dict[str, Any]:
    """One worker's VmRSS after its first 100 jobs and after ``total`` jobs."""
    first = list(range(100))
    handles, _ = submit_single(adapter, first)
    workers = Workers(adapter.worker_argv(), 1, logdir, label)
    try:
        wait_done(len(first), workers, DRAIN_DEADLINE)
        check_results(adapter, handles, first)
        after_first = vm_rss(workers.processes[0].pid)
        rest = list(range(100, total))
        chunk = 1000
        for index in range(0, len(rest), chunk):
            part = rest[index : index + chunk]
            if submit_bulk(adapter, part) is None:
                submit_single(adapter, part)
        wait_done(total, workers, DRAIN_DEADLINE)
        after_total = vm_rss(workers.processes[0].pid)
    finally:
        workers.stop()
    return {"jobs": total, "rss_after_100_bytes": after_first, "rss_after_all_bytes": after_total}


def run(system: str, jobs: int, latency_jobs: int, memory_jobs: int) -> dict[str, Any]:
    adapter = importlib.import_module(f"bench_{system}").Adapter()
    values = list(range(jobs))
    report: dict[str, Any] = {"system": system, "bulk_api": adapter.bulk_api}
    with tempfile.TemporaryDirectory(prefix=f"benchcmp-{system}-") as tmp:
        logdir = Path(tmp)

        def fresh() -> None:
            adapter.reset()
            empty_redis()

        fresh()
        handles, seconds = submit_single(adapter, values)
        report["submit_us_per_call"] = seconds / jobs * 1e6
        report["drain_k1"] = drain(adapter, handles, values, 1, logdir, "k1")

        fresh()
        bulk = submit_bulk(adapter, values)
        if bulk is None:
            report["bulk_us_per_job"] = None
            handles, _ = submit_single(adapter, values)
        else:
            handles, seconds = bulk
            report["bulk_us_per_job"] = seconds / jobs * 1e6
        report["drain_k2"] = drain(adapter, handles, values, 2, logdir, "k2")

        fresh()
        report["latency"] = latency(adapter, latency_jobs, logdir, "latency")

        if memory_jobs:
            fresh()
            report["memory"] = memory(adapter, memory_jobs, logdir, "memory")
        fresh()
    return report


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", required=True)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--memory-jobs", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    # Stopped by bench/compare.py (Ctrl-C, a timeout): unwind, so that the workers are stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        report = run(args.system, args.jobs, args.latency_jobs, args.memory_jobs)
    except BenchError as exc:
        print(f"{args.system}: {exc}", file=sys.stderr)
        sys.exit(1)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
