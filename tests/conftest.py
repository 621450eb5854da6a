"""Fixtures: a real Redis, real worker processes, waiting on conditions (no sleep guesses)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.redis_server import private_redis

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for this test session: ``SISY_TEST_REDIS_URL`` (must be empty) or our own server."""
    from channels.layers import channel_layers
    from django.conf import settings

    url = os.environ.get("SISY_TEST_REDIS_URL")
    server = contextlib.ExitStack()
    if url:
        if redis_lib.Redis.from_url(url).dbsize():
            pytest.exit(f"refusing to use {url}: the database is not empty", returncode=3)
    else:
        try:
            url = server.enter_context(private_redis())
        except RuntimeError as exc:
            pytest.exit(str(exc), returncode=3)
    settings.REDIS_URL = url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "sisy.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": url, "socket_timeout": 10}]},
        }
    }
    channel_layers.backends.clear()
    os.environ["SISY_TEST_REDIS_URL"] = url
    with server:
        yield url


@pytest.fixture(autouse=True)
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    """The test Redis, flushed before and after each test.

    sisy's wake-ups leave on a sender thread; they are awaited first, so none
    sent by one test lands in the next.
    """
    from sisy.dispatch import _sender, flush

    client = redis_lib.Redis.from_url(redis_url)
    flush()
    client.flushdb()
    _sender.forget_full_channels()
    yield client
    flush()
    client.flushdb()
    _sender.forget_full_channels()


class Workers:
    """Starts worker processes (``sisy_worker`` or ``runworker``); stops them at teardown."""

    def __init__(self, redis_url: str, db_name: str) -> None:
        self.env = {
            **os.environ,
            "SISY_TEST_REDIS_URL": redis_url,
            "SISY_TEST_DB_NAME": db_name,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "SISY_LOG_LEVEL": os.environ.get("SISY_LOG_LEVEL", "DEBUG"),
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, *args: str, command: str = "sisy_worker") -> subprocess.Popen[bytes]:
        log = Path(tempfile.mkstemp(prefix="sisy-worker-", suffix=".log")[1])
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "django", command, "-v", "0", *args],
                env=self.env,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        self.logs.append(log)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 20) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # the worker prints its threads' stacks
            time.sleep(1)
            process.kill()
            process.wait()
            raise

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        # pytest shows a test's captured output when it fails: the workers' logs.
        for process, log in zip(self.processes, self.logs, strict=True):
            command = " ".join(str(arg) for arg in process.args[3:])
            print(f"--- worker pid {process.pid}, exit {process.returncode}: {command}")
            print(log.read_text(errors="replace"))
            log.unlink(missing_ok=True)


@pytest.fixture
def workers(redis_url: str, transactional_db: None) -> Iterator[Workers]:
    from django.db import connection

    pool = Workers(redis_url, connection.settings_dict["NAME"])
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """The test database, without the Tasks the migration test app's migrations create.

    Left enabled, they would fire in any test that ticks the clock once their
    minute comes; tests/test_operations.py makes them again when it needs them.
    """
    from sisy.models import Task

    with django_db_blocker.unblock():
        Task.objects.all().delete()


def zcard(redis: redis_lib.Redis, key: str) -> int:
    """How many messages wait in a channel's Redis key, once sisy's sends have landed.

    ``sisy.submit`` hands its wake-up to a sender thread and returns; flush
    first so that a count means what was sent, not what was sent so far.
    """
    from sisy.dispatch import flush

    assert flush(), "wake-ups still in flight"
    return int(redis.zcard(key))  # type: ignore[arg-type]
