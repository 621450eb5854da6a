"""What this worker process is doing, shared by the runner and the heartbeat thread."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

STARTUP = "startup"
IDLE = "idle"
IN_PROGRESS = "in_progress"


def default_worker_id() -> str:
    """``<hostname>-<pid>-<random>``: unique even when a pid is reused."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class CurrentJob:
    job_id: str
    job_title: str
    attempt: int


class WorkerState:
    """Status of one worker process. Thread-safe; read by the heartbeat thread."""

    def __init__(self, worker_id: str | None = None, channels: tuple[str, ...] = ()) -> None:
        self.worker_id = worker_id or default_worker_id()
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.started_at: datetime = timezone.now()
        self.channels = channels
        self.status = STARTUP
        self.job: CurrentJob | None = None
        #: When the current job started (``time.monotonic()``).
        self.job_began = 0.0
        #: The running job task's primary key and start time.
        self.task: tuple[int, datetime] | None = None
        self.progress: float | None = None
        self.progress_message = ""
        self.jobs_done = 0
        #: Messages refused as malformed (no type, unknown type, a wake-up
        #: whose job is not a job id), since the worker started.
        self.messages_dropped = 0
        #: Consumers currently inside the runner (claiming or running).
        self.active = 0
        #: Set when the process is asked to stop: no new job is claimed.
        self.stopping = threading.Event()
        #: Jobs claimed in a batch and not started yet, oldest claim first,
        #: with the monotonic time of their claim (see sisy.runner.claim_batch).
        self.reserved: list[tuple[Any, float]] = []
        #: Moving average of how long a job took here (seconds), for sizing claims.
        self.job_seconds: float | None = None
        #: Succeeded jobs not written down yet (sisy.completion.Success), oldest
        #: first: a worker draining a batch writes them together.
        self.unwritten: list[Any] = []
        #: Set on every status change, so the heartbeat is published at once.
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.active += 1

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def set_idle(self) -> None:
        with self._lock:
            self.status, self.job, self.progress, self.progress_message = IDLE, None, None, ""
        self.changed.set()

    def job_started(self, job_id: str, job_title: str, attempt: int) -> None:
        with self._lock:
            self.status = IN_PROGRESS
            self.job = CurrentJob(job_id, job_title, attempt)
            self.job_began = time.monotonic()
            self.progress, self.progress_message = 0.0, ""
        self.changed.set()

    def job_finished(self) -> None:
        with self._lock:
            self.jobs_done += 1
            self.status, self.job, self.progress, self.progress_message = IDLE, None, None, ""
            self.task = None
        self.changed.set()

    def note_dropped(self) -> None:
        """Count a malformed message that was logged and dropped."""
        with self._lock:
            self.messages_dropped += 1

    def reserve(self, jobs: list[Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self.reserved.extend((job, now) for job in jobs)

    def next_reserved(self) -> tuple[Any, float] | None:
        """The next claimed job to run and its claim time; ``None`` if none is left."""
        with self._lock:
            return self.reserved.pop(0) if self.reserved else None

    def take_reserved(self) -> list[Any]:
        """Every claimed job not started yet, which the caller now gives back."""
        with self._lock:
            jobs, self.reserved = [job for job, _ in self.reserved], []
            return jobs

    def reserved_ids(self) -> list[Any]:
        with self._lock:
            return [job.pk for job, _ in self.reserved]

    def keep_unwritten(self, success: Any) -> None:
        with self._lock:
            self.unwritten.append(success)

    def take_unwritten(self) -> list[Any]:
        """The succeeded jobs not written yet, which the caller now writes."""
        with self._lock:
            taken, self.unwritten = self.unwritten, []
            return taken

    def unwritten_since(self) -> float | None:
        """When the oldest unwritten job ended (``time.monotonic()``); ``None`` if none."""
        with self._lock:
            return self.unwritten[0].ended if self.unwritten else None

    def count_unwritten(self) -> int:
        with self._lock:
            return len(self.unwritten)

    def note_job_seconds(self, seconds: float) -> None:
        with self._lock:
            previous = self.job_seconds
            self.job_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def task_started(self, task_pk: int, started: datetime) -> None:
        with self._lock:
            self.task = (task_pk, started)
            self.progress, self.progress_message = 0.0, ""

    def current_task(self) -> tuple[int, datetime] | None:
        with self._lock:
            return self.task

    def set_progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self.progress, self.progress_message = fraction, message

    def current_job(self) -> CurrentJob | None:
        with self._lock:
            return self.job

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat payload: ``status`` and ``hostname`` always, the job while one runs."""
        with self._lock:
            payload: dict[str, Any] = {
                "worker_id": self.worker_id,
                "status": self.status,
                "hostname": self.hostname,
                "pid": self.pid,
                "started_at": self.started_at.isoformat(),
                "last_seen": timezone.now().isoformat(),
                "channels": list(self.channels),
                "jobs_done": self.jobs_done,
                "messages_dropped": self.messages_dropped,
            }
            if self.reserved:
                payload["reserved"] = len(self.reserved)
            if self.job is not None:
                payload["job_id"] = self.job.job_id
                payload["job_title"] = self.job.job_title
                payload["attempt"] = self.job.attempt
                payload["progress"] = self.progress
                if self.progress_message:
                    payload["progress_message"] = self.progress_message
            return payload


_current: WorkerState | None = None
_current_lock = threading.Lock()


def current() -> WorkerState:
    """This process's worker state, created on first use (e.g. under ``runworker``)."""
    global _current
    with _current_lock:
        if _current is None or _current.pid != os.getpid():
            _current = WorkerState()
        return _current


def install(state: WorkerState) -> WorkerState:
    """Make ``state`` this process's worker state (``sisy_worker`` does at start-up)."""
    global _current
    with _current_lock:
        _current = state
        return state
