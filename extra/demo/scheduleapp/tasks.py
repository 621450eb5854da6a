"""Plain task functions: module-level functions taking one parameter, ``message``."""

from __future__ import annotations

from typing import Any

from scheduleapp.models import Customer, RunLog


def report(message: dict[str, Any]) -> dict[str, int]:
    """Counts what the demo's Tasks have done so far; the result is stored on the run's job."""
    counts = {
        "customers": Customer.objects.count(),
        "log_lines": RunLog.objects.count(),
    }
    RunLog.write(
        message, "function", f"{counts['customers']} customer(s), {counts['log_lines']} log line(s)"
    )
    return counts


def tally(message: dict[str, Any]) -> int:
    """Keeps its own count in ``task.userdata``, which sisy saves after the run."""
    task = message["task"]
    task.userdata["runs"] = task.userdata.get("runs", 0) + 1
    RunLog.write(
        message,
        "function",
        f"userdata runs={task.userdata['runs']} (from {task.userdata.get('from', '?')})",
    )
    return int(task.userdata["runs"])
