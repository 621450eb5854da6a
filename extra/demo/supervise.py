"""The demo's child processes: started together, their output prefixed, stopped by pid.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches
``run.py`` only, which then stops the children itself, in order: SIGTERM to
each (the last started first), a wait, a second SIGTERM to the ones still
running (on which sisy's worker stops at once, without finishing its job) and
SIGKILL five seconds later. A second Ctrl-C skips the wait.

Standard library only: ``run.py`` imports this before its virtualenv exists.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

#: Seconds between the second SIGTERM and SIGKILL.
KILL_AFTER = 5.0

_print_lock = threading.Lock()


def say(message: str = "") -> None:
    """Print a line whole, even while the children's output is being copied."""
    with _print_lock:
        print(message, flush=True)


def stop_process(process: subprocess.Popen[Any], name: str, timeout: float) -> int:
    """SIGTERM ``process`` (by its pid) and wait for it; return its exit status.

    If it is still running after ``timeout`` seconds (or on Ctrl-C meanwhile), a
    second SIGTERM follows, on which sisy's worker exits at once without
    finishing its job, and SIGKILL five seconds after that.
    """
    if process.poll() is not None:
        return process.returncode
    process.terminate()
    try:
        return process.wait(timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        say(f"{name} (pid {process.pid}) is still running: SIGTERM again, then SIGKILL")
    return _hurry(process)


def _hurry(process: subprocess.Popen[Any]) -> int:
    """A second SIGTERM, then SIGKILL after ``KILL_AFTER`` seconds (or at once on Ctrl-C)."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(KILL_AFTER)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.kill()
        return process.wait()


def _pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        say(f"{prefix}{line.rstrip()}")


@dataclass
class Child:
    label: str
    process: subprocess.Popen[str]
    pump: threading.Thread
    stop_note: str = ""
    stop_timeout: float = 30.0
    reported: bool = field(default=False)


class Supervisor:
    """``python manage.py <args>`` children, run together and stopped together.

    Use it as a context manager: leaving the block stops every child still
    running. :meth:`watch` blocks until one of them exits.
    """

    def __init__(self, python: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.python = python
        self.cwd = cwd
        self.env = env
        self.children: list[Child] = []

    def start(
        self,
        label: str,
        args: Sequence[str],
        *,
        stop_note: str = "",
        stop_timeout: float = 30.0,
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [self.python, "manage.py", *args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches run.py, which stops the child in order
        )
        assert process.stdout is not None
        pump = threading.Thread(
            target=_pump,
            args=(process.stdout, f"    [{label}] "),
            name=f"{label}-output",
            daemon=True,
        )
        pump.start()
        self.children.append(Child(label, process, pump, stop_note, stop_timeout))
        say(f"Started the {label}: manage.py {' '.join(args)} (pid {process.pid}).")
        return process

    def exited(self) -> list[Child]:
        """The children that have exited and were not reported yet."""
        gone = [c for c in self.children if not c.reported and c.process.poll() is not None]
        for child in gone:
            child.reported = True
        return gone

    def watch(self, interval: float = 0.5) -> Child:
        """Block until a child exits; return it. Ctrl-C (KeyboardInterrupt) goes to the caller."""
        while True:
            gone = self.exited()
            if gone:
                return gone[0]
            time.sleep(interval)

    def stop_all(self) -> None:
        """SIGTERM every running child, the last started first; wait; then hurry them."""
        running = [c for c in reversed(self.children) if c.process.poll() is None]
        for child in running:
            say(
                f"Stopping the {child.label} (SIGTERM to pid {child.process.pid}){child.stop_note}."
            )
            child.process.terminate()
        hurry = False
        for child in running:
            if not hurry:
                deadline = time.monotonic() + child.stop_timeout
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    say(f"The {child.label} is still running: SIGTERM again, then SIGKILL.")
                except KeyboardInterrupt:
                    say("Ctrl-C again: SIGTERM again to every child still running, then SIGKILL.")
                    hurry = True
            if child.process.poll() is None:
                _hurry(child.process)
        for child in self.children:
            child.pump.join(5)
        for child in running:
            say(
                f"The {child.label} (pid {child.process.pid}) exited with status "
                f"{child.process.returncode}."
            )

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()
