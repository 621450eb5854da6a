"""Task functions for the scheduled-task tests. Each records its runs in Redis."""

from __future__ import annotations

import time
from typing import Any

from tests.testapp.sisy_modules import record


def record_run(message: dict[str, Any]) -> None:
    task = message["task"]
    record("runs", task.label)
    task.userdata["runs"] = task.userdata.get("runs", 0) + 1


def slow_run(message: dict[str, Any]) -> None:
    record("overlap", f"start {time.time():.3f}")
    time.sleep(message["task"].userdata.get("seconds", 1.5))
    record("overlap", f"end {time.time():.3f}")


def two_params(message: dict[str, Any], extra: int) -> None:
    pass


def wrongly_named(msg: dict[str, Any]) -> None:
    pass


class NotAModel:
    def method(self, message: dict[str, Any]) -> None:
        pass


NOT_CALLABLE = 42
