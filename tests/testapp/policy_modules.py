"""Modules for the retry and time limit tests (listed in SISY_MODULES by tests/settings.py)."""

from __future__ import annotations

import time
from typing import Any

from sisy.modules import Module, register
from tests.testapp.sisy_modules import _redis, record


@register("flaky")
class Flaky(Module):
    """Fails its first ``failures`` runs (counted in Redis per ``key``), then succeeds."""

    retries = 2
    retry_backoff = 0.05
    retry_jitter = False
    schema = {
        "type": "object",
        "required": ["key", "failures"],
        "properties": {"key": {"type": "string"}, "failures": {"type": "integer"}},
    }

    def run(self) -> Any:
        runs = int(_redis().incr(f"test:flaky:{self.data['key']}"))
        record("flaky", f"{self.data['key']}:{runs}")
        if runs <= self.data["failures"]:
            raise RuntimeError(f"failure {runs} of {self.data['failures']}")
        return {"runs": runs}


@register("spin")
class Spin(Module):
    """Busy Python code for ``seconds``: a time limit stops it at its next instruction."""

    schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}

    def run(self) -> Any:
        deadline = time.monotonic() + self.data.get("seconds", 60)
        while time.monotonic() < deadline:
            pass
        return "spun"

    def cleanup(self) -> None:
        record("cleanup", f"spin:{self.job.pk if self.job else None}")


@register("block")
class Block(Module):
    """Blocks in C (time.sleep) for ``seconds``: only replacing the process stops it."""

    time_limit = 0.5
    schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}

    def run(self) -> Any:
        time.sleep(self.data.get("seconds", 60))
        return "woke"
