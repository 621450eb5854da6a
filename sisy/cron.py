"""Cron schedules: parsing and next run times. Pure: no ORM, no settings, no clock reads.

A schedule has five fields (minute, hour, day of month, month, day of week)
and an optional sixth, seconds::

    "0,15,30,45 9-17 * * mon-fri"   every quarter hour in office hours
    "0 0 l * *"                     midnight on the last day of each month
    "* * * * * */10"                every ten seconds

``*``, ``*/x``, ``x-y``, ``x-y/z`` and lists work in every field; ``l`` is the
last day of the month; days are ``0``-``7`` (0 and 7 are Sunday) or
``sun``-``sat``; months ``1``-``12`` or ``jan``-``dec``. As in cron, when both
day of month and day of week are restricted (neither starts with ``*``), a day
matching either runs; otherwise a day must match both.

Times are wall-clock times in a time zone, with two rules for daylight saving:

- a time that does not exist (02:30 on a spring-forward day in Europe) runs
  at the first instant after the gap (03:00), once;
- a time that exists twice (01:30 on a fall-back day) runs once, at its first
  occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache

from croniter import CroniterBadDateError, croniter

FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week", "second")

#: How far ahead next_run() looks before deciding a schedule never fires
#: (e.g. "0 0 30 2 *": February 30th).
HORIZON = timedelta(days=366 * 5)


@dataclass(frozen=True)
class Schedule:
    expression: str

    @property
    def day_or(self) -> bool:
        """Cron's rule: a day matching either day field runs, if neither starts with ``*``."""
        fields = self.expression.split()
        return not (fields[2].startswith("*") or fields[4].startswith("*"))


@lru_cache(maxsize=4096)
def parse(expression: str) -> Schedule:
    """Validate ``expression``; ``ValueError`` names the offending field."""
    if not isinstance(expression, str):
        raise ValueError(f"a schedule is a string, not {type(expression).__name__}")
    fields = expression.lower().split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"schedule {expression!r} has {len(fields)} field(s); cron schedules have 5 "
            "(minute hour day-of-month month day-of-week) or 6 (with seconds last)"
        )
    for index, value in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[index] = value
        if not croniter.is_valid(" ".join(probe)):
            raise ValueError(
                f"schedule {expression!r}: {value!r} is not a valid {FIELD_NAMES[index]} field"
            )
    normalised = " ".join(_collapse_single_ranges(value) for value in fields)
    if not croniter.is_valid(normalised):
        raise ValueError(f"schedule {expression!r} is not a valid cron schedule")
    try:
        schedule = Schedule(normalised)
        croniter(normalised, datetime(2000, 1, 1), day_or=schedule.day_or).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"schedule {expression!r} never fires") from None
    return schedule


_SINGLE_RANGE = re.compile(r"^(\w+)-(\w+)(?:/\d+)?$")


def _collapse_single_ranges(value: str) -> str:
    """``5-5`` means ``5``. (croniter 7.0 reads a one-value range as ``*``.)"""
    items = []
    for item in value.split(","):
        match = _SINGLE_RANGE.match(item)
        items.append(match.group(1) if match and match.group(1) == match.group(2) else item)
    return ",".join(items)


def next_run(schedule: str | Schedule, after: datetime, tz: tzinfo) -> datetime | None:
    """The first run strictly after the aware datetime ``after``, in UTC; ``None`` if never."""
    if after.tzinfo is None:
        raise ValueError("next_run() needs an aware datetime")
    parsed = schedule if isinstance(schedule, Schedule) else parse(schedule)
    return _next_run(parsed, after, tz)


@lru_cache(maxsize=1024)
def _next_run(parsed: Schedule, after: datetime, tz: tzinfo) -> datetime | None:
    # Cached: the clock asks this for every Task of a batch with the same `after`.
    # Walk wall-clock times from `after`'s own. Only first occurrences (fold=0)
    # and gap ends are ever run, and their instants rise with their wall times,
    # so nothing later than `after` hides before its wall time; in a fall-back
    # hour the filter below skips first occurrences already past.
    start = after.astimezone(tz).replace(tzinfo=None)
    iterator = croniter(parsed.expression, start, day_or=parsed.day_or)
    limit = after + HORIZON
    while True:
        try:
            wall = iterator.get_next(datetime)
        except CroniterBadDateError:
            return None
        instant = _to_instant(wall, tz)
        if instant > after:
            return instant.astimezone(timezone.utc)
        if instant > limit:
            return None


def next_runs(schedule: str | Schedule, after: datetime, tz: tzinfo, count: int) -> list[datetime]:
    """The next ``count`` runs after ``after`` (fewer if the schedule stops firing)."""
    runs: list[datetime] = []
    current = after
    while len(runs) < count:
        found = next_run(schedule, current, tz)
        if found is None:
            break
        runs.append(found)
        current = found
    return runs


def _to_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The instant a naive wall-clock time in ``tz`` stands for, by the two DST rules."""
    first = wall.replace(tzinfo=tz, fold=0)
    if _exists(first, wall):
        return first  # fold=0 is the first of two occurrences on a fall-back day
    # In a spring-forward gap: run at the first instant whose wall time is past it.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(timezone.utc)  # before the gap
    high = first.astimezone(timezone.utc)  # after the gap
    if low > high:
        low, high = high, low
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0).astimezone(tz)


def _exists(aware: datetime, wall: datetime) -> bool:
    return aware.astimezone(timezone.utc).astimezone(aware.tzinfo).replace(tzinfo=None) == wall


@lru_cache(maxsize=1024)
def describe(expression: str) -> str:
    """The schedule in words, e.g. "At 00:00, on the last day of the month".

    Uses cron-descriptor (24-hour clock); falls back to the expression itself
    for anything it cannot describe, so a page showing it never fails.
    """
    from cron_descriptor import ExpressionDescriptor, Options

    try:
        fields = parse(expression).expression.upper().split()
    except ValueError:
        return expression
    if len(fields) == 6:  # cron-descriptor reads seconds first, sisy last
        fields = [fields[5], *fields[:5]]
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        return str(ExpressionDescriptor(" ".join(fields), options).get_description())
    except Exception:  # its errors have no common base class
        return expression
