"""Enqueueing: store the job, then wake a worker.

The row is written first and is the truth; the wake-up is sent only once the
transaction commits, and a wake-up that cannot be sent (Redis down,
``ChannelFull``) is logged, never raised: the clock's sweep sends it again.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, router, transaction
from django.db.models import Model
from django.utils import timezone

from sisy import signals, sql
from sisy import spec as specs
from sisy.conf import sisy_settings
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobTask
from sisy.modules import Problem

logger = logging.getLogger("sisy.dispatch")

RUN_MESSAGE_TYPE = "sisy.run"

#: Seconds a caller waits for a wake-up to be handed to Redis before giving up.
SEND_TIMEOUT = 5.0

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=Model)


class _LoopThread:
    """One event loop in a daemon thread, for sending from synchronous code.

    ``async_to_sync`` would start a new loop, and so a new Redis connection,
    for every call; this keeps one loop (and the layer's pool) per process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._outbox: dict[tuple[int, str], tuple[Any, str, list[uuid.UUID | str]]] = {}
        self._waiting = 0
        self._draining = False
        self._idle = threading.Event()
        self._idle.set()
        #: Channels found full, and until when to send nothing more to them.
        self._full_until: dict[tuple[int, str], float] = {}
        #: Until when callers send nothing themselves (see ``_send_directly``).
        self.direct_paused_until = 0.0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        loop = self._ensure()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def post(self, layer: Any, channel: str, ids: list[uuid.UUID | str], limit: int) -> bool:
        """Queue wake-ups for the sender loop and return at once.

        One task on the loop sends what is queued, one message after another:
        sends never pile up on the layer's connection pool, and a burst is
        coalesced (see :func:`wake_soon`). ``False`` when ``limit`` wake-ups are
        already waiting; those given are dropped then.
        """
        with self._lock:
            if self._pid and self._pid != os.getpid():  # a forked child: nothing is draining
                self._outbox, self._waiting, self._draining = {}, 0, False
                self._idle.set()
            if self._waiting >= limit:
                return False
            self._outbox.setdefault((id(layer), channel), (layer, channel, []))[2].extend(ids)
            self._waiting += len(ids)
            self._idle.clear()
            schedule = not self._draining
            self._draining = True
        if schedule:
            loop = self._ensure()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))
        return True

    async def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._outbox, self._waiting = self._outbox, {}, 0
                if not batch:
                    self._draining = False
                    self._idle.set()
                    return
            for key, (layer, channel, ids) in batch.items():
                if time.monotonic() < self.full_until(key):
                    continue  # wake-ups are pending there: a woken worker drains
                # Each woken worker drains the channel: a few wake-ups start as
                # many workers on a burst as one per job would.
                full: list[bool] = []
                await _send_logged(
                    layer, channel, ids[: sisy_settings.SWEEP_MAX_WAKEUPS], on_full=full.append
                )
                if full:
                    self.note_full(key)

    def idle(self) -> bool:
        """Whether no wake-up is waiting to be sent."""
        return self._idle.is_set()

    def full_until(self, key: tuple[int, str]) -> float:
        """Until when (``time.monotonic()``) nothing is sent to a channel found full."""
        return self._full_until.get(key, 0.0)

    def note_full(self, key: tuple[int, str]) -> None:
        self._full_until[key] = time.monotonic() + CHANNEL_FULL_PAUSE

    def forget_full_channels(self) -> None:
        """Send to every channel again at once, directly too (tests, after emptying Redis)."""
        self._full_until.clear()
        self.direct_paused_until = 0.0

    def flush(self, timeout: float) -> bool:
        """Wait until every posted wake-up was sent (or failed); ``False`` on timeout."""
        return self._idle.wait(timeout)

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # new, or inherited by fork
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="sisy-sender", daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_sender = _LoopThread()

#: Seconds :func:`wake_soon` sends nothing more to a channel it found full
#: (``ChannelFull``): its pending wake-ups will start a worker, which drains
#: the channel, so more sends would only cost Redis round trips.
CHANNEL_FULL_PAUSE = 1.0

#: Most wake-ups :func:`wake_soon` keeps waiting; past it, it drops them (the
#: jobs are stored, and a draining worker or the sweep finds them).
MAX_PENDING_SENDS = 1000


def flush(timeout: float = SEND_TIMEOUT) -> bool:
    """Wait for the wake-ups :func:`submit` started to reach Redis (or fail).

    Returns ``False`` if some are still in flight after ``timeout`` seconds.
    Called at interpreter exit; useful in tests and short scripts.
    """
    return _sender.flush(timeout)


atexit.register(flush, 2.0)


def run_message(job_id: uuid.UUID | str) -> dict[str, str]:
    """The wake-up for one job: tiny, built by the server, naming the job only."""
    return {"type": RUN_MESSAGE_TYPE, "job": str(job_id)}


def submit(
    spec: Any,
    *,
    channel: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
) -> Job:
    """Validate ``spec``, store it as a queued :class:`~sisy.models.Job`, wake a worker.

    ``spec`` is a dict (or JSON text) in any of the three accepted shapes.
    Raises :class:`~sisy.exceptions.JobSpecError` and stores nothing when it is
    invalid. Inside a transaction the wake-up waits for the commit.

    ``channel``: the channel whose workers run the job (default
    :setting:`SISY_RUN_CHANNEL`). ``priority`` (-32768 to 32767): among the
    queued jobs of a channel, a worker starts the highest first, then the
    oldest. ``run_after`` (an aware datetime): the job does not start before
    it, and its wake-up is sent by the clock once it is due. A bad
    ``channel``, ``priority`` or ``run_after`` raises ``ValueError`` naming
    it, and nothing is stored.
    """
    job_spec = specs.parse(spec)
    return store(job_spec, channel=channel, priority=priority, run_after=run_after)


#: Jobs with more tasks are inserted with several statements (in one
#: transaction): one statement stays within every database's parameter limit.
MAX_TASKS_IN_ONE_STATEMENT = 50

#: The range of ``Job.priority`` (a small integer column).
MIN_PRIORITY, MAX_PRIORITY = -32768, 32767


def store(
    job_spec: specs.JobSpec,
    *,
    channel: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
) -> Job:
    """Insert an already validated job and its tasks; send the wake-up on commit.

    ``priority``: among the queued jobs of a channel, a worker starts the
    highest first (then the oldest). ``run_after``: the job is not started
    before this time; its wake-up is sent by the clock once it is due, not now.
    ``ValueError`` names a bad ``priority``, ``run_after`` or ``channel`` (see
    :data:`CHANNEL_NAME`); nothing is stored.
    """
    _check_options(priority, run_after, channel)
    rows: list[tuple[Any, ...]] = []
    job = _rows(
        job_spec,
        channel or sisy_settings.RUN_CHANNEL,
        sisy_settings.MAX_ATTEMPTS,
        priority,
        run_after,
        rows,
    )
    tasks = sql.Values(JobTask, _TASK_FIELDS, rows)
    using = router.db_for_write(Job)
    try:
        if len(rows) <= MAX_TASKS_IN_ONE_STATEMENT:
            sql.insert_together([(Job, [job]), (JobTask, tasks)], using)
        else:
            with transaction.atomic(using=using):
                sql.insert(Job, [job], using)
                sql.insert(JobTask, tasks, using)
    except IntegrityError as exc:
        if Job.objects.using(using).filter(pk=job.job_id).exists():
            raise JobSpecError(
                [Problem(None, "$.job_id", f"a job with id {job.job_id} already exists")]
            ) from exc
        raise
    channel_name, job_id = job.channel, job.job_id

    def committed() -> None:
        signals.send(signals.job_queued, Job, job=job)
        if run_after is None or run_after <= timezone.now():
            wake_soon(channel_name, [job_id])
        # else: the clock's tick sends the wake-up once the job is due.

    transaction.on_commit(committed, using=using)
    return job


def _rows(
    job_spec: specs.JobSpec,
    channel: str,
    max_attempts: int,
    priority: int,
    run_after: datetime | None,
    tasks: list[tuple[Any, ...]],
) -> Job:
    """The job to insert for ``job_spec``; its tasks' rows are added to ``tasks``.

    A task's row holds the values of :data:`_TASK_FIELDS`.
    """
    job = _build(
        Job,
        {
            "job_id": job_spec.job_id,
            "job_title": job_spec.title,
            "channel": channel,
            "max_attempts": job_spec.max_attempts or max_attempts,
            "retries": job_spec.retries,
            "time_limit": job_spec.time_limit,
            "priority": priority,
            "run_after": run_after,
        },
    )
    job_id = job_spec.job_id
    tasks.extend(
        (job_id, position, task_spec.module, task_spec.data)
        for position, task_spec in enumerate(job_spec.tasks)
    )
    return job


#: The fields a job task's row gives (the others take their defaults); no
#: instances are built for them, as nothing reads them after the insert.
_TASK_FIELDS = ("job_id", "position", "module", "data")


_field_plans: dict[type[Model], list[tuple[str, Any, Callable[[], Any] | None]]] = {}


def _build(model: type[ModelT], values: dict[str, Any]) -> ModelT:
    """``model(**values)``, by position: Django's quicker way in, as for rows it reads.

    Fields not in ``values`` get their defaults, as with keyword arguments: a
    callable default is called for each row, any other is the field's value
    (the very object ``get_default()`` returns each time).
    """
    plan = _field_plans.get(model)
    if plan is None:
        plan = _field_plans[model] = [
            (f.attname, None, f.get_default)
            if f.has_default() and callable(f.default)
            else (f.attname, f.get_default(), None)
            for f in model._meta.concrete_fields
        ]
    return model(
        *[
            values[name] if name in values else (default() if default else value)
            for name, value, default in plan
        ]
    )


def submit_many(
    job_specs: Iterable[Any],
    *,
    channel: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
) -> list[Job]:
    """Validate and store many jobs at once: one transaction, a few wake-ups.

    Every specification is validated first; if any is invalid, nothing is
    stored and :class:`~sisy.exceptions.JobSpecError` lists the problems, each
    message starting with the specification's index (``job 3: ...``). The
    jobs are inserted in bulk, then at most :setting:`SISY_SWEEP_MAX_WAKEUPS`
    wake-ups are sent: each woken worker drains the channel, so one wake-up
    per job would only cost Redis round trips. ``job_queued`` is sent for
    every job. The other arguments are as for :func:`submit`, for all jobs.
    """
    _check_options(priority, run_after, channel)
    channel = channel or sisy_settings.RUN_CHANNEL
    max_attempts = sisy_settings.MAX_ATTEMPTS
    jobs: list[Job] = []
    rows: list[tuple[Any, ...]] = []
    problems: list[Problem] = []
    for index, spec in enumerate(job_specs):
        # Each job's row is built as soon as its spec is parsed: the parsed
        # spec is then dropped, and fewer objects live until the insert.
        try:
            jobs.append(_rows(specs.parse(spec), channel, max_attempts, priority, run_after, rows))
        except JobSpecError as exc:
            problems.extend(
                Problem(p.task, p.path, f"job {index}: {p.message}") for p in exc.problems
            )
    ids = [job.job_id for job in jobs]
    if len(set(ids)) != len(ids):
        problems.append(Problem(None, "$.job_id", "two of the jobs have the same job_id"))
    if problems:
        raise JobSpecError(problems)
    using = router.db_for_write(Job)
    try:
        with transaction.atomic(using=using):
            sql.insert(Job, jobs, using)
            sql.insert(JobTask, sql.Values(JobTask, _TASK_FIELDS, rows), using)
    except IntegrityError as exc:
        # Rolled back: the only unique key a caller chooses is the job id.
        taken = [
            pk
            for start in range(0, len(ids), 1000)  # within every database's parameter limit
            for pk in Job.objects.using(using)
            .filter(pk__in=ids[start : start + 1000])
            .values_list("pk", flat=True)
        ]
        if taken:
            raise JobSpecError(
                [Problem(None, "$.job_id", f"a job with id {pk} already exists") for pk in taken]
            ) from exc
        raise

    def committed() -> None:
        for job in jobs:
            signals.send(signals.job_queued, Job, job=job)
        if run_after is None or run_after <= timezone.now():
            by_channel: dict[str, list[uuid.UUID]] = {}
            for job in jobs:
                by_channel.setdefault(job.channel, []).append(job.job_id)
            for name, channel_ids in by_channel.items():
                wake_soon(name, channel_ids[: sisy_settings.SWEEP_MAX_WAKEUPS])

    transaction.on_commit(committed, using=using)
    return jobs


#: What a job's channel may be called: Channels' rule for a channel name that
#: is not process-local (no ``!``), under its 100 characters.
CHANNEL_NAME = re.compile(r"[a-zA-Z\d\-_.]{1,99}")


def _check_options(priority: Any, run_after: Any, channel: Any) -> None:
    if channel is not None and not (isinstance(channel, str) and CHANNEL_NAME.fullmatch(channel)):
        raise ValueError(
            "channel must be a channel name (ASCII letters, digits, '-', '_' and '.', "
            f"fewer than 100 characters), not {channel!r}"
        )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"priority must be an integer, not {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}"
        )
    if run_after is None:
        return
    if not isinstance(run_after, datetime):
        raise ValueError(f"run_after must be a datetime or None, not {run_after!r}")
    if settings.USE_TZ and timezone.is_naive(run_after):
        raise ValueError("run_after must be an aware datetime (USE_TZ is on)")
    if not settings.USE_TZ and timezone.is_aware(run_after):
        raise ValueError("run_after must be a naive datetime (USE_TZ is off)")


def cancel(job_id: uuid.UUID | str) -> bool:
    """Cancel a queued or running job; ``False`` if it had already finished (or is unknown).

    A queued job never runs. A running job's module sees it at its next
    ``progress()`` call (an exception) or through ``self.cancelled``; its
    cleanup runs, and the job ends ``cancelled``.
    """
    from django.utils import timezone

    from sisy.models import JobStatus, JobTaskStatus

    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        return False  # not a job id: no such job
    now = timezone.now()
    fields = {"status": JobStatus.CANCELLED, "finished_at": now, "lease_expires_at": None}
    with transaction.atomic(using=router.db_for_write(Job)):
        # Each UPDATE is conditional, so a claim racing with this cannot be missed.
        queued = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(**fields)
        if queued:
            # RUNNING too: a job requeued after its worker died keeps that task's state.
            JobTask.objects.filter(
                job_id=job_id, status__in=[JobTaskStatus.PENDING, JobTaskStatus.RUNNING]
            ).update(status=JobTaskStatus.CANCELLED, finished_at=now)
        running = (
            0
            if queued
            else (Job.objects.filter(pk=job_id, status=JobStatus.IN_PROGRESS).update(**fields))
        )
    if queued:
        signals.send(signals.job_finished, Job, job=Job.objects.get(pk=job_id), status="cancelled")
    # A running job's worker notices at its next write and finishes the bookkeeping.
    return bool(queued or running)


def wake_soon(channel: str, job_ids: Iterable[uuid.UUID | str]) -> None:
    """Send the wake-ups of ``job_ids`` on ``channel`` without ever waiting long on Redis.

    What :func:`submit` uses. One wake-up goes straight to Redis from the
    calling thread when the layer can send synchronously
    (:meth:`sisy.layers.RedisChannelLayer.send_now`: one round trip, at most
    :data:`sisy.layers.SEND_NOW_TIMEOUT`), so an idle worker starts the job
    at once. Otherwise (several wake-ups, another layer, Redis found away in
    the last :data:`DIRECT_SEND_PAUSE` seconds, wake-ups still queued) the
    caller's time is one hand-over to sisy's sender thread. The thread sends
    queued wake-ups one after another; of a burst queued while it was busy it
    sends at most :setting:`SISY_SWEEP_MAX_WAKEUPS` per channel, since each
    woken worker drains the channel, and to a channel found full it sends
    nothing for :data:`CHANNEL_FULL_PAUSE` seconds. A failed send is logged;
    the job stays queued for a draining worker or the sweep, as with
    :func:`wake`.
    """
    from channels.layers import get_channel_layer

    ids = list(job_ids)
    if not ids:
        return
    try:
        layer = get_channel_layer(sisy_settings.CHANNEL_LAYER)
    except Exception:
        logger.exception("sisy: the channel layer cannot be loaded; jobs stay queued")
        return
    if layer is None:
        logger.warning("sisy: no channel layer is configured; %d job(s) stay queued", len(ids))
        return
    if time.monotonic() < _sender.full_until((id(layer), channel)):
        return  # wake-ups are pending there: a worker they start drains the channel
    if len(ids) == 1 and _send_directly(layer, channel, ids[0]):
        return
    if not _sender.post(layer, channel, ids, MAX_PENDING_SENDS):
        logger.warning(
            "sisy: %d wake-ups are already waiting to be sent (Redis slow or away?); "
            "%d more left to the sweep",
            MAX_PENDING_SENDS,
            len(ids),
        )


#: Seconds :func:`wake_soon` leaves every wake-up to the sender thread after a
#: direct send failed (Redis away or slow): callers then never wait on Redis.
DIRECT_SEND_PAUSE = 5.0


def _send_directly(layer: Any, channel: str, job_id: uuid.UUID | str) -> bool:
    """Send one wake-up from the calling thread, if the layer can; ``True`` if it was handled.

    One Redis round trip (:meth:`sisy.layers.RedisChannelLayer.send_now`)
    instead of a hand-over to the sender thread and an event loop's turn: a
    worker waiting on the channel starts the job sooner. Not when the sender
    thread still has wake-ups queued, nor for :data:`DIRECT_SEND_PAUSE`
    seconds after Redis was found away: then the caller hands over to the
    thread as before, and waits on nothing. (A channel found full gets
    nothing at all for a while: :func:`wake_soon` checks that first.)
    """
    import redis.exceptions
    from channels.exceptions import ChannelFull

    # Looked up on the class: some layers (channels-redis's pub/sub one) answer
    # any attribute through an event loop, which this thread may not have.
    send_now = getattr(type(layer), "send_now", None)
    if send_now is None or not _sender.idle():
        return False
    if time.monotonic() < _sender.direct_paused_until:
        return False
    try:
        send_now(layer, channel, run_message(job_id))
    except ChannelFull:
        _sender.note_full((id(layer), channel))
        return True  # a woken worker drains the channel and finds the job
    except Exception as exc:
        if not isinstance(
            exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        ):
            # Not Redis being away (a channel name the layer refuses, say):
            # other channels' sends are fine, and the thread will say why.
            return False
        _sender.direct_paused_until = time.monotonic() + DIRECT_SEND_PAUSE
        logger.warning(
            "sisy: could not send wake-up on %r (%s: %s); sending from sisy's thread "
            "for %.0fs, and the sweep sends any wake-up lost",
            channel,
            type(exc).__name__,
            exc,
            DIRECT_SEND_PAUSE,
        )
        return False
    return True


async def _send_logged(
    layer: Any,
    channel: str,
    ids: list[uuid.UUID | str],
    on_full: Callable[[bool], None] | None = None,
) -> int:
    try:
        return await asyncio.wait_for(_send_all(layer, channel, ids, on_full), SEND_TIMEOUT)
    except Exception as exc:
        logger.warning(
            "sisy: could not send wake-up on %r (%s: %s); the sweep will send it again",
            channel,
            type(exc).__name__,
            exc,
        )
        return 0


def wake(channel: str, job_ids: Iterable[uuid.UUID | str]) -> int:
    """Send one wake-up per job on ``channel``; return how many were sent.

    Never raises: a failed send leaves the job queued, and the sweep (each
    clock tick) sends its wake-up again.
    """
    from channels.layers import get_channel_layer

    ids = list(job_ids)
    if not ids:
        return 0
    try:
        layer = get_channel_layer(sisy_settings.CHANNEL_LAYER)
    except Exception:
        logger.exception("sisy: the channel layer cannot be loaded; jobs stay queued")
        return 0
    if layer is None:
        logger.warning("sisy: no channel layer is configured; %d job(s) stay queued", len(ids))
        return 0
    try:
        return _sender.run(_send_all(layer, channel, ids), SEND_TIMEOUT)
    except Exception as exc:  # the layer's transport failed; the sweep will retry
        logger.warning(
            "sisy: could not send wake-up on %r (%s: %s); the sweep will send it again",
            channel,
            type(exc).__name__,
            exc,
        )
        return 0


async def _send_all(
    layer: Any,
    channel: str,
    ids: list[uuid.UUID | str],
    on_full: Callable[[bool], None] | None = None,
) -> int:
    from channels.exceptions import ChannelFull

    sent = 0
    for job_id in ids:
        try:
            await layer.send(channel, run_message(job_id))
        except ChannelFull:
            # A full channel means wake-ups are already pending: a woken worker
            # keeps claiming queued jobs from the database, so this one is found.
            logger.debug(
                "sisy: %r is full; job %s will be found by a draining worker", channel, job_id
            )
            if on_full is not None:
                on_full(True)
            break
        sent += 1
    return sent


def retry(job_id: uuid.UUID | str) -> bool:
    """Queue a failed or cancelled job again, as a new attempt; ``False`` otherwise.

    Its tasks that had not succeeded run again; the ones that had are kept.
    The retry grants one more attempt if the job had used them all.
    """
    from django.db.models import F
    from django.db.models.functions import Greatest

    from sisy.models import JobStatus, JobTaskStatus

    with transaction.atomic(using=router.db_for_write(Job)):
        updated = Job.objects.filter(
            pk=job_id, status__in=[JobStatus.FAILED, JobStatus.CANCELLED]
        ).update(
            status=JobStatus.QUEUED,
            worker="",
            error="",
            finished_at=None,
            lease_expires_at=None,
            max_attempts=Greatest(F("max_attempts"), F("attempts") + 1),
        )
        if updated:
            JobTask.objects.filter(job_id=job_id).exclude(status=JobTaskStatus.SUCCEEDED).update(
                status=JobTaskStatus.PENDING,
                progress=0.0,
                progress_message="",
                error="",
                result=None,
                started_at=None,
                finished_at=None,
            )
    if updated:
        job = Job.objects.get(pk=job_id)

        def committed() -> None:
            signals.send(signals.job_queued, Job, job=job)
            wake(job.channel, [job.pk])

        transaction.on_commit(committed)
    return bool(updated)
