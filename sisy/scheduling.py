"""When a scheduled Task runs next: pure rules over its fields, no ORM, no clock reads.

Used by ``Task.save()``, by the clock when it fires Tasks, and by the data
migration operation on historical models (which have none of Task's methods).

The rules:

- a Task runs only inside its window, ``start_running`` to ``end_running``;
- ``wait_for_schedule=False`` makes its first run due at once (or at
  ``start_running``), not at its schedule's first time;
- after a run, the next one is the schedule's first time after *now*, so a
  clock that was down for a day fires a missed Task once, not once per miss;
- a Task whose next run would fall after ``end_running``, or that has run
  ``iterations`` times (when not 0), is retired: disabled, ``next_run`` empty,
  ``retired_at`` set, the row and its Jobs kept for history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from sisy import cron


@dataclass(frozen=True)
class Plan:
    """The outcome for one Task: its next run, or retirement."""

    next_run: datetime | None
    retire: bool


def first_run(
    schedule: str,
    now: datetime,
    tz: tzinfo,
    *,
    start_running: datetime | None = None,
    end_running: datetime | None = None,
    wait_for_schedule: bool = True,
) -> Plan:
    """The first run of a newly enabled Task."""
    start = max(now, start_running) if start_running else now
    if wait_for_schedule:
        # A run exactly at start_running counts: look from just before it.
        after = start - timedelta(microseconds=1) if start_running and start_running >= now else now
        candidate = cron.next_run(schedule, after, tz)
    else:
        candidate = start
    return _within(candidate, end_running)


def after_run(
    schedule: str,
    now: datetime,
    tz: tzinfo,
    *,
    runs: int,
    iterations: int,
    end_running: datetime | None = None,
) -> Plan:
    """The next run of a Task that has just run for the ``runs``-th time."""
    if iterations and runs >= iterations:
        return Plan(None, retire=True)
    return _within(cron.next_run(schedule, now, tz), end_running)


def _within(candidate: datetime | None, end_running: datetime | None) -> Plan:
    if candidate is None or (end_running is not None and candidate > end_running):
        return Plan(None, retire=True)
    return Plan(candidate, retire=False)
