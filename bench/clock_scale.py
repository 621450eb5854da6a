"""How long one clock tick takes with 100,000 enabled Tasks of which 1,000 are due.

Run from the repository root::

    python bench/clock_scale.py --db sqlite
    python bench/clock_scale.py --db postgres

The script builds its own world and tears it down: a fresh database (a temporary
SQLite file, or a ``sisy_bench_<pid>`` PostgreSQL database on 127.0.0.1:5432 as
user ``postgres``), a private ``redis-server`` on a free loopback port (so the
wake-ups are really sent), ``migrate``, then the Tasks. It times
``sisy.clock.tick(now)`` a few times (the same due Tasks made due again in
between), checks what each tick did, and prints a markdown report, also written
to ``bench/results/clock_scale-<db>.md``. See bench/README.md.

Speed is reported, not asserted: the exit status is non-zero only when a tick
did the wrong thing (wrong Jobs, Tasks not moved on, no wake-ups).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TASK_PATH = "tests.testapp.tasks.record_run"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

# Run as a script, sys.path[0] is bench/: the settings and the task function live in tests/.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.redis_server import private_redis  # noqa: E402


class VerificationError(Exception):
    """A tick did not do what it must."""


# --------------------------------------------------------------------------- environment


@contextmanager
def fresh_database(db: str) -> Iterator[str]:
    """A new, empty database; yields its name (a file path for SQLite) and removes it after."""
    if db == "sqlite":
        workdir = tempfile.mkdtemp(prefix="sisy-bench-sqlite-")
        try:
            yield str(Path(workdir) / "bench.sqlite3")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    import psycopg

    name = f"sisy_bench_{os.getpid()}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"cannot reach PostgreSQL ({PG_ADMIN}): {exc}") from None
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        if "django.db" in sys.modules:  # Django's connection to it must go first
            from django.db import connections

            connections.close_all()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_django(db: str, db_name: str, redis_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["SISY_TEST_DATABASE"] = db
    os.environ["SISY_TEST_DB_NAME"] = db_name
    os.environ["SISY_TEST_REDIS_URL"] = redis_url
    import django

    django.setup()


# --------------------------------------------------------------------------- measuring


@dataclass
class Statement:
    sql: str
    seconds: float


@dataclass
class Run:
    seconds: float
    statements: list[Statement] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


class StatementTimer:
    """A ``connection.execute_wrapper`` recording each statement and its duration.

    Costs two clock reads per statement, unlike CaptureQueriesContext, whose
    rendering of the SQL with its parameters runs one extra ``SELECT QUOTE(?)``
    per 999 parameters on SQLite.
    """

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append(Statement(sql, time.perf_counter() - start))


def phases() -> list[tuple[str, Any, str]]:
    """The parts of a tick timed separately: (name, owner, attribute wrapped)."""
    from django.db.models.query import QuerySet

    from sisy import clock, dispatch, scheduling

    return [
        ("reap expired leases", clock, "reap_expired_leases"),
        ("redispatch stale jobs", clock, "redispatch_stale"),
        ("move the Tasks on (grouped UPDATEs)", clock, "_move_on"),
        ("bulk_create: Jobs and JobTasks", QuerySet, "bulk_create"),
        ("scheduling.after_run: next runs (cron)", scheduling, "after_run"),
        ("dispatch.wake: wake-ups to Redis", dispatch, "wake"),
    ]


@contextmanager
def phase_timer(totals: dict[str, float]) -> Iterator[None]:
    """Wrap each phase's function to add up its wall time in ``totals``; unwrap after.

    One pair of clock reads per call (1,000 calls to after_run: well under 1 ms).
    """
    saved = []
    for name, owner, attribute in phases():
        original = getattr(owner, attribute)
        saved.append((owner, attribute, original))

        def timed(*args: Any, _f: Any = original, _n: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                totals[_n] = totals.get(_n, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, timed)
    try:
        yield
    finally:
        for owner, attribute, original in saved:
            setattr(owner, attribute, original)


_TABLE = re.compile(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)


def describe(sql: str) -> str:
    """A short name for a statement: its verb, its table and what stands out."""
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    match = _TABLE.search(sql)
    name = f"{verb} {match.group(1)}" if match else verb
    if verb == "SELECT" and "FOR UPDATE" in sql.upper():
        name += " FOR UPDATE"
    if verb == "INSERT" and "ON CONFLICT" in sql.upper():
        name += " ON CONFLICT DO NOTHING"
    if verb == "UPDATE" and "CASE WHEN" in sql.upper():
        name += " (CASE WHEN per row)"
    return name


# --------------------------------------------------------------------------- the world


def create_tasks(total: int, due: int, now: datetime) -> list[int]:
    """Bulk-create ``total`` enabled Tasks, ``due`` of them due; return the due ones' pks."""
    from django.db import transaction

    from sisy.models import Task, task_with_callable

    template = task_with_callable(TASK_PATH, label="template", schedule="* * * * *")
    step = max(total // due, 1) if due else total + 1  # due Tasks spread over the table
    batch: list[Task] = []
    with transaction.atomic():
        for i in range(total):
            is_due = i % step == 0 and i // step < due
            batch.append(
                Task(
                    label=f"bench-{i:07d}",
                    schedule=template.schedule,
                    callable=dict(template.callable),
                    enabled=True,
                    # Not due: spread over the next day, past any later run of this script.
                    next_run=now - timedelta(minutes=1)
                    if is_due
                    else now + timedelta(hours=1, seconds=i * 0.8),
                )
            )
            if len(batch) == 5000:
                Task.objects.bulk_create(batch)
                batch = []
        if batch:
            Task.objects.bulk_create(batch)
    pks = list(Task.objects.filter(next_run__lte=now).order_by("pk").values_list("pk", flat=True))
    if len(pks) != due:
        raise VerificationError(f"created {len(pks)} due Tasks, not {due}")
    return pks


def channel_key() -> str:
    from channels.layers import get_channel_layer

    from sisy.conf import sisy_settings

    layer = get_channel_layer(sisy_settings.CHANNEL_LAYER)
    return f"{layer.prefix}{sisy_settings.RUN_CHANNEL}"


def make_due(due_pks: list[int], now: datetime, redis_url: str) -> None:
    """Delete the Jobs of earlier ticks, make the same Tasks due again, empty the channel."""
    import redis
    from django.db import transaction

    from sisy.models import Job, JobTask, Task

    with transaction.atomic():
        JobTask.objects.all().delete()
        Job.objects.all().delete()
        Task.objects.filter(pk__in=due_pks).update(
            next_run=now - timedelta(minutes=1), last_run=None, run_count=0
        )
    client = redis.Redis.from_url(redis_url)
    client.delete(channel_key())
    client.close()


def verify(report: Any, due_pks: list[int], total: int, now: datetime, redis_url: str) -> list[str]:
    """What one tick must have done; returns the problems found (none is success)."""
    import redis
    from channels.layers import get_channel_layer

    from sisy import clock
    from sisy.conf import sisy_settings
    from sisy.models import Job, JobTask, Task

    due = len(due_pks)
    problems = []
    if (report.fired, report.skipped) != (due, 0):
        problems.append(f"tick reported {report.fired} fired, {report.skipped} skipped")
    jobs = dict(Job.objects.values_list("pk", "task_id"))
    if sorted(jobs.values()) != due_pks:
        problems.append(f"{len(jobs)} Jobs, not one for each of the {due} due Tasks")
    steps = list(JobTask.objects.values_list("job_id", "position", "module", "data"))
    expected = sorted((str(pk), 0, clock.TASK_MODULE, {"task": task}) for pk, task in jobs.items())
    if sorted((str(j), p, m, d) for j, p, m, d in steps) != expected:
        problems.append(f"{len(steps)} JobTasks do not match the {len(jobs)} Jobs")
    moved = Task.objects.filter(pk__in=due_pks, next_run__gt=now, run_count=1, last_run=now)
    if moved.count() != due:
        problems.append(f"only {moved.count()} of {due} fired Tasks moved on past now")
    if Task.objects.filter(enabled=True).count() != total:
        problems.append(f"not {total} enabled Tasks any more")
    untouched = Task.objects.exclude(pk__in=due_pks).filter(run_count=0, next_run__gt=now)
    if untouched.count() != total - due:
        problems.append(f"only {untouched.count()} of {total - due} Tasks not due left alone")
    layer = get_channel_layer(sisy_settings.CHANNEL_LAYER)
    batches = -(-due // sisy_settings.CLOCK_BATCH)
    capacity = layer.get_capacity(sisy_settings.RUN_CHANNEL)
    wakeups = min(due, clock.MAX_WAKEUPS_PER_BATCH * batches, capacity)
    client = redis.Redis.from_url(redis_url)
    members = client.zrange(channel_key(), 0, -1)
    client.close()
    woken = {layer.deserialize(member)["job"] for member in members}
    unknown = woken - {str(pk) for pk in jobs}
    if len(members) != wakeups or unknown:
        problems.append(
            f"{len(members)} wake-ups in Redis key {channel_key()!r} ({len(unknown)} "
            f"for unknown jobs), expected {wakeups}"
        )
    return problems


def timed_tick(now: datetime) -> tuple[Run, Any]:
    from django.db import connection

    from sisy import clock

    timer = StatementTimer()
    totals: dict[str, float] = {}
    with connection.execute_wrapper(timer), phase_timer(totals):
        start = time.perf_counter()
        report = clock.tick(now)
        seconds = time.perf_counter() - start
    return Run(seconds, timer.statements, totals), report


def captured_tick(now: datetime) -> tuple[float, list[str], Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sisy import clock

    with CaptureQueriesContext(connection) as captured:
        start = time.perf_counter()
        report = clock.tick(now)
        seconds = time.perf_counter() - start
    return seconds, [q["sql"] for q in captured.captured_queries], report


def profiled_tick(now: datetime, limit: int = 25) -> tuple[str, Any]:
    """One tick under cProfile: the functions that took the most time, with what they call."""
    import cProfile
    import io
    import pstats

    from sisy import clock

    profiler = cProfile.Profile()
    report = profiler.runcall(clock.tick, now)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(limit)
    return out.getvalue().strip(), report


def explain_due(now: datetime, db: str) -> str:
    """The due-Tasks query exactly as fire_due_tasks builds it, with its plan."""
    from django.db import connection, transaction

    from sisy.conf import sisy_settings
    from sisy.models import Task

    with transaction.atomic():
        qs = Task.objects.due(now).order_by("next_run")
        if connection.features.has_select_for_update_skip_locked:
            qs = qs.select_for_update(skip_locked=True, of=("self",))
        sql, params = qs[: sisy_settings.CLOCK_BATCH].query.sql_with_params()
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if db == "postgres" else "EXPLAIN QUERY PLAN "
        with connection.cursor() as cursor:
            cursor.execute(prefix + sql, params)
            rows = cursor.fetchall()
        transaction.set_rollback(True)
    plan = "\n".join(row[0] if db == "postgres" else row[-1] for row in rows)
    return f"{sql}\n\n{plan}"


def server_version(db: str) -> str:
    from django.db import connection

    if db == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return f"PostgreSQL {cursor.fetchone()[0]}"


def redis_version(redis_url: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_url)
    version = client.info("server")["redis_version"]
    client.close()
    return f"Redis {version}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- report


def fmt(seconds: float) -> str:
    return f"{seconds:.3f}"


def breakdown(runs: list[Run]) -> list[tuple[str, int, float]]:
    """Per kind of statement: how many per tick and the median seconds they took in all."""
    kinds: dict[str, list[list[float]]] = {}
    for index, run in enumerate(runs):
        for statement in run.statements:
            per_run = kinds.setdefault(describe(statement.sql), [[] for _ in runs])
            per_run[index].append(statement.seconds)
    rows = [
        (name, len(per_run[0]), statistics.median(sum(times) for times in per_run))
        for name, per_run in kinds.items()
    ]
    return sorted(rows, key=lambda row: -row[2])


def phase_rows(runs: list[Run]) -> list[tuple[str, float]]:
    """Median seconds per tick of each phase, and of the rest."""
    names = [name for name, _, _ in phases()]
    rows = [(name, statistics.median(run.phases.get(name, 0.0) for run in runs)) for name in names]
    rest = statistics.median(run.seconds - sum(run.phases.values()) for run in runs)
    rows.append(("the rest: select due Tasks, build Jobs, commit", rest))
    return rows


def render(
    *,
    db: str,
    total: int,
    due: int,
    runs: list[Run],
    setup_seconds: float,
    captured_seconds: float,
    captured: list[str],
    plan: str,
    versions: dict[str, str],
    profile: str | None,
) -> str:
    import django

    times = [run.seconds for run in runs]
    counts = sorted({len(run.statements) for run in runs})
    sql_seconds = statistics.median(sum(s.seconds for s in run.statements) for run in runs)
    median = statistics.median(times)
    target = 1.0 if db == "postgres" else 2.0
    lines = [
        f"## sisy clock tick, {versions['database']}",
        "",
        "| database | tasks | due | tick s (median) | tick s (min-max) | statements "
        "| Python | Django | server |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
        f"| {db} | {total:,} | {due:,} | {fmt(median)} | {fmt(min(times))}-{fmt(max(times))} "
        f"| {len(captured)} | {platform.python_version()} | {django.get_version()} "
        f"| {versions['database']} |",
        "",
        f"- target: under {target:g} s on {db}: met by {sum(t < target for t in times)} of "
        f"{len(runs)} timed ticks (median {fmt(median)} s)",
        f"- statements: {len(captured)} counted by CaptureQueriesContext (includes "
        f"transaction statements it logs); {'/'.join(map(str, counts))} executed through "
        "the cursor in each timed run",
        f"- SQL time (driver + server) {fmt(sql_seconds)} s of the median tick; the rest, "
        f"{fmt(median - sql_seconds)} s, is Python (ORM, cron, wake-up sends)",
        f"- tick under CaptureQueriesContext (not the figure: it renders every statement "
        f"with its parameters): {fmt(captured_seconds)} s",
        f"- setup (migrate + {total:,} Tasks bulk-created): {setup_seconds:.1f} s",
        f"- host: {os.cpu_count()} CPUs, {cpu_model()}, load average "
        f"{os.getloadavg()[0]:.2f} at the end; {versions['redis']}; "
        f"psycopg {versions.get('psycopg', '-')}; channels-redis {versions['channels_redis']}",
        "",
        "### Where the tick's time goes (median per tick, wall time incl. SQL)",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
        *(f"| {name} | {fmt(secs)} | {secs / median:.0%} |" for name, secs in phase_rows(runs)),
        "",
        "### Where the tick's SQL time goes (median per tick, driver + server)",
        "",
        "| statement | per tick | seconds |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {count} | {fmt(secs)} |" for name, count, secs in breakdown(runs)]
    lines += [
        "",
        "### Statements captured by CaptureQueriesContext (SQL cut at 120 characters)",
        "",
        "```",
        *(f"{i:>2}. {sql[:120]}" for i, sql in enumerate(captured, 1)),
        "```",
        "",
        "### The due-Tasks query and its plan",
        "",
        "```",
        plan,
        "```",
        "",
    ]
    if profile:
        lines += ["### One more tick under cProfile (--profile)", "", "```", profile, "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def bench(db: str, total: int, due: int, runs: int, redis_url: str, profile: bool) -> int:
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from sisy.models import Task

    versions = {"redis": redis_version(redis_url)}
    start = time.perf_counter()
    call_command("migrate", verbosity=0, interactive=False)
    # tests.migrationapp's migrations create a few Tasks: keep the count exact.
    Task.objects.all().delete()
    now = timezone.now()
    due_pks = create_tasks(total, due, now)
    if db == "postgres":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    setup_seconds = time.perf_counter() - start
    versions["database"] = server_version(db)
    import channels_redis

    versions["channels_redis"] = channels_redis.__version__
    if db == "postgres":
        import psycopg

        versions["psycopg"] = psycopg.__version__

    failures: list[str] = []
    measured: list[Run] = []
    for number in range(1, runs + 1):
        now = timezone.now()
        make_due(due_pks, now, redis_url)
        run, report = timed_tick(now)
        measured.append(run)
        problems = verify(report, due_pks, total, now, redis_url)
        failures += [f"run {number}: {problem}" for problem in problems]
        print(
            f"run {number}: {run.seconds:.3f} s, {len(run.statements)} statements, "
            f"{report.fired} fired{'' if not problems else ', FAILED: ' + '; '.join(problems)}",
            file=sys.stderr,
        )

    now = timezone.now()
    make_due(due_pks, now, redis_url)
    plan = explain_due(now, db)
    captured_seconds, captured, report = captured_tick(now)
    failures += [f"captured run: {p}" for p in verify(report, due_pks, total, now, redis_url)]
    profiled = None
    if profile:
        now = timezone.now()
        make_due(due_pks, now, redis_url)
        profiled, report = profiled_tick(now)
        failures += [f"profiled run: {p}" for p in verify(report, due_pks, total, now, redis_url)]

    text = render(
        db=db,
        total=total,
        due=due,
        runs=measured,
        setup_seconds=setup_seconds,
        captured_seconds=captured_seconds,
        captured=captured,
        plan=plan,
        versions=versions,
        profile=profiled,
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"clock_scale-{db}.md").write_text(text)
    if failures:
        print("VERIFICATION FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--tasks", type=int, default=100_000, help="enabled Tasks (100,000)")
    parser.add_argument("--due", type=int, default=1_000, help="of which due (1,000)")
    parser.add_argument("--runs", type=int, default=3, help="timed ticks (3)")
    parser.add_argument(
        "--profile", action="store_true", help="add one untimed tick under cProfile to the report"
    )
    args = parser.parse_args(argv)
    if not 0 < args.due <= args.tasks or args.runs < 1:
        parser.error("need 0 < --due <= --tasks and --runs >= 1")
    os.chdir(ROOT)
    with private_redis() as redis_url, fresh_database(args.db) as db_name:
        setup_django(args.db, db_name, redis_url)
        return bench(args.db, args.tasks, args.due, args.runs, redis_url, args.profile)


if __name__ == "__main__":
    sys.exit(main())
