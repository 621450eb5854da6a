"""The fault-injection suite: real workers, real Redis servers, real signals.

Every case counts executions on its own, in a Redis of its own that no fault
touches (``SISY_CHAOS_COUNTER_URL``): the ``chaos`` test module adds one to
``chaos:starts`` when its run() starts and to ``chaos:runs_done`` when it
returns, and a ``job_finished`` receiver adds one to ``chaos:recorded`` each
time a worker's fenced write of an outcome succeeds. Each case prints a
one-line summary of its figures, appends them as a JSON line to the file
named by ``SISY_CHAOS_REPORT`` (if set), then asserts them.

The suite is left out of an ordinary test run. It runs with ``-m chaos``,
with ``SISY_CHAOS=1``, or when a path under tests/chaos is named.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.conftest import Workers
from tests.redis_server import free_port, private_redis, redis_binary

CHAOS_DIR = Path(__file__).resolve().parent

#: The clock ticks every second and a job's lease is 4 s in every case here,
#: so a dead worker's job is queued again within about 5 s.
TICK = 1.0
LEASE = 4.0
CHAOS_ENV = {
    "SISY_TEST_HEARTBEAT_FREQUENCY": str(TICK),
    "SISY_TEST_JOB_LEASE": str(LEASE),
    "SISY_LOG_LEVEL": "INFO",
}

#: ``SISY_CHAOS_FULL=1`` runs cases 9 and 11 at the sizes the issue names
#: (10,000 jobs per layer; a 60 s window) instead of the CI's smaller ones.
FULL = os.environ.get("SISY_CHAOS_FULL") == "1"

_summary: list[str] = []


# --- Selection: chaos runs only when asked for ----------------------------------


def _chaos_requested(config: pytest.Config) -> bool:
    if os.environ.get("SISY_CHAOS") == "1":
        return True
    markexpr = config.getoption("markexpr", "") or ""
    if "chaos" in markexpr and "not chaos" not in markexpr:
        return True
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == CHAOS_DIR or CHAOS_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _chaos_requested(config):
        return
    chaos = [item for item in items if item.get_closest_marker("chaos")]
    if chaos:
        config.hook.pytest_deselected(items=chaos)
        items[:] = [item for item in items if not item.get_closest_marker("chaos")]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _summary:
        terminalreporter.write_sep("-", "sisy chaos figures")
        for line in _summary:
            terminalreporter.write_line(line)


# --- Redis servers ------------------------------------------------------------------


class RedisServer:
    """A private, non-persistent redis-server that can be killed and restarted on its port."""

    def __init__(self) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server on PATH")
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="sisy-chaos-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # fmt: off
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--daemonize", "no",
             "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        # fmt: on
        client = redis_lib.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis_lib.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL: nothing is saved, every message and key is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def counter_url() -> Iterator[str]:
    """A Redis that only counts executions; no fault ever touches it."""
    with private_redis() as url:
        yield url


@pytest.fixture
def counter(counter_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(counter_url)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def use_layer(settings: Any) -> Iterator[Callable[..., None]]:
    """Point this process's channel layer elsewhere (workers: set their env to match)."""
    from channels.layers import channel_layers

    def use(
        urls: list[str],
        backend: str = "channels_redis.core.RedisChannelLayer",
        **config: Any,
    ) -> None:
        hosts = [{"address": url, "socket_timeout": 10} for url in urls]
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": backend, "CONFIG": {"hosts": hosts, **config}}
        }
        settings.REDIS_URL = urls[0]
        channel_layers.backends.clear()

    yield use
    channel_layers.backends.clear()


# --- Counting and reporting ------------------------------------------------------------


@dataclass
class Tally:
    """What really happened to a set of jobs, from the rows and from the counters."""

    jobs: int
    statuses: dict[str, int]
    unfinished: int
    #: Executions of run() started beyond the first, summed over jobs.
    duplicate_starts: int
    #: Jobs whose run() returned more than once (allowed only after a fault).
    run_completed_twice: int
    #: Jobs whose outcome was recorded more than once (never allowed).
    recorded_twice: int
    #: Jobs marked succeeded whose run() never returned (never allowed).
    succeeded_without_run: int
    attempts: dict[int, int] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "succeeded": self.statuses.get("succeeded", 0),
            "failed": self.statuses.get("failed", 0),
            "unfinished": self.unfinished,
            "duplicate_starts": self.duplicate_starts,
            "run_completed_twice": self.run_completed_twice,
            "recorded_twice": self.recorded_twice,
            "succeeded_without_run": self.succeeded_without_run,
        }


class Chaos:
    """Helpers shared by the cases: workers, clocks, submitting, waiting, counting, reporting."""

    def __init__(
        self,
        workers: Workers,
        redis: redis_lib.Redis,
        counter: redis_lib.Redis,
        counter_url: str,
        request: pytest.FixtureRequest,
    ) -> None:
        self.workers = workers
        self.redis = redis
        self.counter = counter
        self.request = request
        workers.env.update(CHAOS_ENV)
        workers.env["SISY_CHAOS_COUNTER_URL"] = counter_url
        self.started = time.monotonic()

    # Processes ---------------------------------------------------------------

    def start_worker(
        self, worker_id: str, *args: str, wait: bool = True, redis: redis_lib.Redis | None = None
    ) -> subprocess.Popen[bytes]:
        process = self.workers.start("--worker-id", worker_id, *args)
        if wait:
            self.wait_worker_up(worker_id, redis)
        return process

    def wait_worker_up(self, worker_id: str, redis: redis_lib.Redis | None = None) -> None:
        client = redis or self.redis
        poll(lambda: client.exists(f"worker:{worker_id}"), 60, f"worker {worker_id} to start")

    def start_clock(self) -> subprocess.Popen[bytes]:
        return self.workers.start(command="sisy_heartbeat")

    @staticmethod
    def kill(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        process.send_signal(signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            process.wait(30)

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        index = self.workers.processes.index(process)
        return self.workers.logs[index].read_text(errors="replace")

    # Jobs ----------------------------------------------------------------------

    def spec(self, index: int, **data: Any) -> dict[str, Any]:
        return {"job_title": f"chaos {index}", "tasks": [{"chaos": data}]}

    def submit(self, count: int, **data: Any) -> SubmitStats:
        """``count`` jobs through ``sisy.submit``; every exception is counted, not raised."""
        stats = SubmitStats()
        for index in range(count):
            stats.submit(self.spec(index, **data))
        return stats

    def wait_finished(self, count: int, timeout: float) -> float:
        """Seconds until ``count`` jobs are finished, or ``timeout`` if they were not.

        It does not raise: the case reports its figures (``unfinished``) first.
        """
        from sisy.models import FINISHED, Job

        took = waited(
            lambda: Job.objects.filter(status__in=FINISHED).count() >= count, timeout, 0.25
        )
        return timeout if took is None else took

    def finished_count(self) -> int:
        from sisy.models import FINISHED, Job

        return Job.objects.filter(status__in=FINISHED).count()

    def tally(self) -> Tally:
        """Count every job in the database against the counters."""
        from collections import Counter

        from sisy.models import FINISHED, Job

        rows = list(Job.objects.values_list("job_id", "status", "attempts"))
        starts = _int_hash(self.counter.hgetall("chaos:starts"))
        done = _int_hash(self.counter.hgetall("chaos:runs_done"))
        recorded = _int_hash(self.counter.hgetall("chaos:recorded"))
        statuses = Counter(status for _, status, _ in rows)
        return Tally(
            jobs=len(rows),
            statuses=dict(statuses),
            unfinished=sum(1 for _, status, _ in rows if status not in FINISHED),
            duplicate_starts=sum(max(0, n - 1) for n in starts.values()),
            run_completed_twice=sum(1 for n in done.values() if n > 1),
            recorded_twice=sum(1 for n in recorded.values() if n > 1),
            succeeded_without_run=sum(
                1 for pk, status, _ in rows if status == "succeeded" and not done.get(str(pk))
            ),
            attempts=dict(Counter(attempts for _, _, attempts in rows)),
        )

    def restart_delays(self, killed_at: dict[int, float]) -> list[float]:
        """Seconds from each kill to the next start of the job the killed worker had started."""
        starts: dict[str, list[tuple[int, float]]] = {}
        for entry in self.counter.lrange("chaos:start_log", 0, -1):
            job_id, pid, moment = entry.decode().split()
            starts.setdefault(job_id, []).append((int(pid), float(moment)))
        delays = []
        for runs in starts.values():
            runs.sort(key=lambda run: run[1])
            for (pid, _), (_, restarted) in itertools.pairwise(runs):
                if pid in killed_at:
                    delays.append(restarted - killed_at[pid])
        return delays

    def report(self, case: str, **figures: Any) -> None:
        """One line on the terminal, one JSON line in ``SISY_CHAOS_REPORT``: before asserting."""
        from django.db import connection

        figures = {
            "database": connection.vendor,
            **figures,
            "case_seconds": round(time.monotonic() - self.started, 1),
        }
        line = f"chaos {case}: " + ", ".join(f"{key}={value}" for key, value in figures.items())
        print(line)
        _summary.append(line)
        path = os.environ.get("SISY_CHAOS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as out:
                at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                entry = {"case": case, "test": self.request.node.nodeid, "at": at, **figures}
                out.write(json.dumps(entry))
                out.write("\n")


class SubmitStats:
    """Submissions from the test process: how many, how many raised, the slowest one."""

    def __init__(self) -> None:
        self.job_ids: list[str] = []
        self.errors: list[str] = []
        self.slowest = 0.0
        self.seconds = 0.0

    def submit(self, spec: dict[str, Any]) -> None:
        import sisy

        start = time.monotonic()
        try:
            self.job_ids.append(str(sisy.submit(spec).job_id))
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        took = time.monotonic() - start
        self.seconds += took
        self.slowest = max(self.slowest, took)


def _int_hash(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {key.decode(): int(value) for key, value in raw.items()}


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Like tests.conftest.wait_for, at a gentler pace for big tables."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def waited(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``predicate`` held, or ``None`` after ``timeout``: for figures, not setup."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)
    return time.monotonic() - start


@pytest.fixture
def chaos(
    workers: Workers,
    redis: redis_lib.Redis,
    counter: redis_lib.Redis,
    counter_url: str,
    request: pytest.FixtureRequest,
) -> Chaos:
    return Chaos(workers, redis, counter, counter_url, request)
