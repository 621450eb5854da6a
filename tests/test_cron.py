"""Cron parsing and next runs: properties over generated schedules, DST, month ends, errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sisy.cron import describe, next_run, next_runs, parse

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

# (low, high) of minute, hour, day of month, month, day of week, second
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6), (0, 59)]


@st.composite
def field(draw: st.DrawFn, index: int) -> tuple[str, set[int]]:
    """A cron field and, computed independently of any cron library, the values it allows."""
    low, high = BOUNDS[index]
    kind = draw(st.sampled_from(["star", "step", "value", "range", "list"]))
    if kind == "star":
        return "*", set(range(low, high + 1))
    if kind == "step":
        step = draw(st.integers(1, (high - low) // 2 + 1))
        return f"*/{step}", set(range(low, high + 1, step))
    if kind == "value":
        value = draw(st.integers(low, high))
        return str(value), {value}
    if kind == "range":
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        step = draw(st.integers(1, 5))
        text = f"{a}-{b}" if step == 1 else f"{a}-{b}/{step}"
        return text, set(range(a, b + 1, step))
    values = sorted(draw(st.sets(st.integers(low, high), min_size=1, max_size=4)))
    return ",".join(map(str, values)), set(values)


@st.composite
def schedule(draw: st.DrawFn) -> tuple[str, list[tuple[str, set[int]]], bool]:
    with_seconds = draw(st.booleans())
    fields = [draw(field(i)) for i in range(6 if with_seconds else 5)]
    # Keep day of month within every month so schedules fire often enough to test.
    _, dom = fields[2]
    if not dom & set(range(1, 29)):
        fields[2] = ("1-28", set(range(1, 29)))
    expression = " ".join(text for text, _ in fields)
    return expression, fields, with_seconds


def matches(moment: datetime, fields: list[tuple[str, set[int]]], with_seconds: bool) -> bool:
    allowed = [values for _, values in fields]
    minute, hour, dom, month, dow = allowed[:5]
    cron_dow = (moment.weekday() + 1) % 7  # cron counts from Sunday = 0
    # Cron's rule: a day field starting with "*" does not restrict; if both
    # day fields restrict, either may match.
    if not fields[2][0].startswith("*") and not fields[4][0].startswith("*"):
        day_ok = moment.day in dom or cron_dow in dow
    else:
        day_ok = moment.day in dom and cron_dow in dow
    second_ok = moment.second in allowed[5] if with_seconds else moment.second == 0
    return (
        moment.minute in minute
        and moment.hour in hour
        and moment.month in month
        and day_ok
        and second_ok
    )


@settings(max_examples=300, deadline=None)
@given(schedule(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)))
def test_every_next_run_matches_all_fields_and_is_strictly_later(
    generated: tuple[str, list[tuple[str, set[int]]], bool], start: datetime
) -> None:
    expression, fields, with_seconds = generated
    previous = start.replace(tzinfo=UTC)
    for run in next_runs(expression, previous, UTC, 5):
        assert run > previous
        assert run.microsecond == 0
        assert matches(run, fields, with_seconds), (expression, run)
        previous = run


@settings(max_examples=200, deadline=None)
@given(schedule(), st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1)))
def test_runs_in_a_dst_zone_are_strictly_increasing_and_never_repeat(
    generated: tuple[str, list[tuple[str, set[int]]], bool], start: datetime
) -> None:
    expression, fields, with_seconds = generated
    previous = start.replace(tzinfo=BERLIN)
    seen: set[datetime] = set()
    for run in next_runs(expression, previous, BERLIN, 5):
        assert run > previous
        assert run not in seen
        wall = run.astimezone(BERLIN).replace(tzinfo=None)
        # Either the wall time matches, or it is the end of a spring-forward gap.
        assert (
            matches(wall, fields, with_seconds)
            or run.astimezone(BERLIN).dst() != (run - timedelta(hours=1)).astimezone(BERLIN).dst()
        )
        seen.add(run)
        previous = run


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)


def walls(runs: list[datetime], zone: ZoneInfo) -> list[str]:
    return [run.astimezone(zone).strftime("%m-%d %H:%M %z") for run in runs]


def test_spring_forward_runs_a_skipped_time_at_the_end_of_the_gap() -> None:
    runs = next_runs("30 2 * * *", local(BERLIN, 2026, 3, 28, 12), BERLIN, 3)
    assert walls(runs, BERLIN) == ["03-29 03:00 +0200", "03-30 02:30 +0200", "03-31 02:30 +0200"]


def test_spring_forward_runs_a_whole_skipped_hour_once() -> None:
    runs = next_runs("*/15 2 * * *", local(BERLIN, 2026, 3, 29, 1), BERLIN, 2)
    assert walls(runs, BERLIN) == ["03-29 03:00 +0200", "03-30 02:00 +0200"]


def test_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() -> None:
    runs = next_runs("30 1 * * *", local(NEW_YORK, 2026, 10, 31, 12), NEW_YORK, 3)
    assert walls(runs, NEW_YORK) == ["11-01 01:30 -0400", "11-02 01:30 -0500", "11-03 01:30 -0500"]


def test_fall_back_hourly_schedule_skips_the_repeated_hour() -> None:
    runs = next_runs("0 * * * *", local(BERLIN, 2026, 10, 25, 1, 30), BERLIN, 3)
    assert walls(runs, BERLIN) == ["10-25 02:00 +0200", "10-25 03:00 +0100", "10-25 04:00 +0100"]


def test_last_day_of_month_and_leap_years() -> None:
    runs = next_runs("0 0 l * *", local(UTC, 2028, 1, 15), UTC, 3)
    assert walls(runs, UTC) == ["01-31 00:00 +0000", "02-29 00:00 +0000", "03-31 00:00 +0000"]


def test_day_names_and_sunday_as_0_or_7() -> None:
    start = local(UTC, 2026, 11, 23)  # a Monday
    assert next_run("0 9 * * sun", start, UTC) == next_run("0 9 * * 0", start, UTC)
    assert next_run("0 9 * * 7", start, UTC) == local(UTC, 2026, 11, 29, 9)
    runs = next_runs("0,15,30,45 9-17 * * mon-fri", local(UTC, 2026, 11, 27, 17, 40), UTC, 2)
    assert walls(runs, UTC) == ["11-27 17:45 +0000", "11-30 09:00 +0000"]


def test_day_fields_combine_as_in_cron() -> None:
    start = local(UTC, 2026, 11, 23)  # Monday 23rd
    # Both restricted: the 1st of the month OR a Monday.
    assert next_run("0 0 1 * mon", start, UTC) == local(UTC, 2026, 11, 30)
    # Day of month starts with "*": both must match, so an odd-numbered Monday.
    assert next_run("0 0 */2 * mon", start, UTC) == local(UTC, 2026, 12, 7)


def test_seconds_are_the_optional_sixth_field() -> None:
    runs = next_runs("* * * * * */20", local(UTC, 2026, 1, 1, 0, 0, 5), UTC, 3)
    assert [r.second for r in runs] == [20, 40, 0]


@pytest.mark.parametrize("expression", ["0 0 * * 5-5", "0 0 * * fri-fri", "0 0 * * 5-5/2,1"])
def test_one_value_ranges_are_that_value(expression: str) -> None:
    # croniter 7.0 treats "5-5" as "*"; sisy's parser does not.
    run = next_run(expression, local(UTC, 2000, 1, 1), UTC)
    assert run is not None
    assert run.strftime("%a") in ("Fri", "Mon")
    assert next_run("0 0 * * 5-5", local(UTC, 2000, 1, 1), UTC) == local(UTC, 2000, 1, 7)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_run("* * * * *", datetime(2026, 1, 1), UTC)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "'61' is not a valid minute field"),
        ("* 24 * * *", "'24' is not a valid hour field"),
        ("* * 0 * *", "'0' is not a valid day of month field"),
        ("* * * 13 *", "'13' is not a valid month field"),
        ("* * * * funday", "'funday' is not a valid day of week field"),
        ("* * * * * 60", "'60' is not a valid second field"),
        ("* * * *", "has 4 field(s)"),
        ("* * * * * * *", "has 7 field(s)"),
        ("0 0 30 2 *", "never fires"),
        ("", "has 0 field(s)"),
    ],
)
def test_invalid_schedules_name_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(expression)


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("0 0 l * *", "At 00:00, on the last day of the month"),
        ("* * * * * */10", "Every 10 seconds"),
        ("30 14 * * mon-fri", "At 14:30, Monday through Friday"),
        ("0 0 1 * 1", "At 00:00, on day 1 of the month, or on Monday"),
        ("5 4 * * 7", "At 04:05, only on Sunday"),
        ("not a schedule", "not a schedule"),
    ],
)
def test_describe_says_the_schedule_in_words(expression: str, words: str) -> None:
    assert describe(expression) == words


@given(
    st.sampled_from(["*", "*/5", "1-3", "1,2", "l"]), st.sampled_from(["*", "mon", "0-7", "1-5/2"])
)
def test_describe_never_fails(day: str, weekday: str) -> None:
    assert describe(f"0 0 {day} * {weekday}")
