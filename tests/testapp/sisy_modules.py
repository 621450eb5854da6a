"""Modules used by the test suite. Executions are recorded in Redis, not in the job rows,
so tests count what really ran rather than what was reported."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis
from django.conf import settings

from sisy import signals
from sisy.modules import Module, register


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def record(kind: str, value: str) -> None:
    _redis().rpush(f"test:{kind}", value)


def recorded(kind: str) -> list[str]:
    values: list[bytes] = _redis().lrange(f"test:{kind}", 0, -1)  # type: ignore[assignment]
    return [v.decode() for v in values]


@register("record")
class Record(Module):
    """Appends ``label`` to a Redis list: proves a task ran, in which order, how often."""

    schema = {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"type": "string"}},
        "additionalProperties": False,
    }

    def run(self) -> dict[str, Any]:
        record("runs", self.data["label"])
        return {"label": self.data["label"], "pid": os.getpid()}


async def _thread_name() -> str:
    return threading.current_thread().name


@register("threads")
class Threads(Module):
    """Names the thread that runs the job, and the one an ``async_to_sync`` call runs on."""

    def run(self) -> dict[str, str]:
        from asgiref.sync import async_to_sync

        return {"job": threading.current_thread().name, "async": async_to_sync(_thread_name)()}


@register("slow")
class Slow(Module):
    schema = {
        "type": "object",
        "required": ["seconds"],
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 60}},
    }

    def run(self) -> str:
        steps = 10
        for step in range(steps):
            time.sleep(self.data["seconds"] / steps)
            self.progress((step + 1) / steps, f"step {step + 1} of {steps}")
        return "slept"


@register("fail")
class Fail(Module):
    schema = {"type": "object", "properties": {"message": {"type": "string"}}}

    def run(self) -> None:
        raise RuntimeError(self.data.get("message", "failed on purpose"))

    def cleanup(self) -> None:
        record("cleanups", self.data.get("message", "fail"))


@register("missing_binary")
class MissingBinary(Module):
    """Like an ffmpeg module on a machine without ffmpeg: initialization refuses."""

    def initialize(self) -> None:
        raise RuntimeError("the 'sisy-no-such-binary' program is not installed")

    def run(self) -> None:  # pragma: no cover - never reached
        record("runs", "missing_binary")


@register("patient")
class Patient(Module):
    """Works in small steps, reporting progress, until done or cancelled."""

    schema = {
        "type": "object",
        "properties": {"seconds": {"type": "number"}, "cancel_self_at": {"type": "integer"}},
    }

    def run(self) -> str:
        steps = int(self.data.get("seconds", 5) / 0.05)
        for step in range(steps):
            if step == self.data.get("cancel_self_at"):
                import sisy

                assert self.job is not None
                sisy.cancel(self.job.pk)
                record("seen_cancelled", str(self.cancelled))
            time.sleep(0.05)
            self.progress((step + 1) / steps)
        return "finished"

    def cleanup(self) -> None:
        record("cleanups", "patient")


# --- Fault-injection suite (tests/chaos) -------------------------------------
# Executions are counted in a Redis of their own (SISY_CHAOS_COUNTER_URL), which
# the faults never touch: the tests flush and restart the Redis sisy uses.

_chaos_counter: redis.Redis | None = None


def chaos_counter() -> redis.Redis | None:
    """The counting Redis of a chaos worker, or ``None`` outside the chaos suite."""
    global _chaos_counter
    url = os.environ.get("SISY_CHAOS_COUNTER_URL")
    if not url:
        return None
    if _chaos_counter is None:
        _chaos_counter = redis.Redis.from_url(url)
    return _chaos_counter


@register("chaos")
class Chaos(Module):
    """Counts its starts and its completed runs per job id, independently of sisy's rows.

    Each start is also logged with the worker's pid and the time, so a test can
    tell how long after a worker was killed its job started again.

    ``seconds``: how long run() takes; ``progress``: report progress while it
    waits (a fenced write each half second); ``fail``: raise instead of completing.
    """

    schema = {
        "type": "object",
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": 60},
            "progress": {"type": "boolean"},
            "fail": {"type": "boolean"},
        },
        "additionalProperties": False,
    }

    def run(self) -> dict[str, Any]:
        assert self.job is not None
        counter = chaos_counter()
        job_id = str(self.job.job_id)
        if counter is not None:
            pipe = counter.pipeline()
            pipe.hincrby("chaos:starts", job_id, 1)
            pipe.rpush("chaos:start_log", f"{job_id} {os.getpid()} {time.time():.3f}")
            pipe.execute()
        seconds = float(self.data.get("seconds", 0))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            if self.data.get("progress"):
                self.progress(1 - max(0.0, deadline - time.monotonic()) / seconds)
        if self.data.get("fail"):
            raise RuntimeError(f"chaos: job {job_id} fails on purpose")
        if counter is not None:
            counter.hincrby("chaos:runs_done", job_id, 1)
        return {"pid": os.getpid(), "attempt": self.job.attempts}


def _count_recorded_outcome(sender: Any, job: Any, status: str, **kwargs: Any) -> None:
    """``job_finished`` is sent only after the fenced write recording the outcome succeeded."""
    counter = chaos_counter()
    if counter is not None:
        counter.hincrby("chaos:recorded", str(job.job_id), 1)


signals.job_finished.connect(_count_recorded_outcome, dispatch_uid="sisy-chaos-recorded")
