"""Modules used by the test suite. Executions are recorded in Redis, not in the job rows,
so tests count what really ran rather than what was reported."""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from django.conf import settings

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
