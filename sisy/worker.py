"""Worker processes: heartbeats for any worker, and ``SisyWorker`` for ``sisy_worker``.

Under plain ``runworker`` the first sisy message starts the heartbeat thread
(:func:`ensure_running`). ``sisy_worker`` runs :class:`SisyWorker`, which
publishes from start-up, bounds how many wake-ups it buffers, drops malformed
messages instead of dying, retries Redis with backoff, and stops cleanly on
SIGTERM/SIGINT: no new claims, the running job finishes, the heartbeat key is
deleted, exit status 0. A second signal exits at once; the lease brings the
job back.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import faulthandler
import functools
import gc
import logging
import os
import signal
import threading
import warnings
from typing import Any

from asgiref.sync import SyncToAsync
from channels.worker import Worker

from sisy import runner, state
from sisy.conf import sisy_settings
from sisy.dispatch import RUN_MESSAGE_TYPE
from sisy.heartbeat import HeartbeatThread
from sisy.layers import POP_READ_MARGIN, SEND_NOW_TIMEOUT
from sisy.models import Job

logger = logging.getLogger("sisy.worker")

_heartbeat: HeartbeatThread | None = None
_heartbeat_lock = threading.Lock()


def start_heartbeat(worker_state: state.WorkerState) -> HeartbeatThread:
    """Start (once per process) the thread publishing ``worker_state`` and renewing leases."""
    global _heartbeat
    with _heartbeat_lock:
        if _heartbeat is None or not _heartbeat.is_alive() or _heartbeat.state is not worker_state:
            _heartbeat = HeartbeatThread(worker_state, on_beat=runner.renew_lease)
            _heartbeat.start()
        return _heartbeat


def stop_heartbeat() -> None:
    global _heartbeat
    with _heartbeat_lock:
        thread, _heartbeat = _heartbeat, None
    if thread is not None:
        thread.stop()


def ensure_running(channel: str) -> state.WorkerState:
    """This process's worker state with its heartbeat running (for ``runworker`` processes)."""
    worker_state = state.current()
    if channel not in worker_state.channels:
        worker_state.channels = (*worker_state.channels, channel)
    if _heartbeat is None:
        start_heartbeat(worker_state)
        atexit.register(stop_heartbeat)
        if worker_state.status == state.STARTUP:
            worker_state.set_idle()
    return worker_state


class SisyWorker(Worker):
    """Channels' worker with heartbeats, bounded prefetch and graceful shutdown."""

    #: Longest pause between two attempts to reach a Redis that does not answer.
    max_backoff = 5.0
    #: Seconds to let cancelled listeners finish at shutdown.
    listener_grace = 2.0

    def __init__(
        self,
        application: Any,
        channels: list[str],
        channel_layer: Any,
        worker_state: state.WorkerState,
        prefetch: int | None = None,
    ) -> None:
        super().__init__(application, channels, channel_layer)
        from sisy.routing import sisy_channels

        #: Channels whose messages are sisy's wake-ups and ticks, which may be
        #: lost: popped with the layer's ``receive_hint`` when it has one.
        self.hint_channels = sisy_channels(application)
        self.state = worker_state
        self.prefetch = prefetch or sisy_settings.WORKER_PREFETCH
        self._stop: asyncio.Event | None = None
        self._signals = 0
        #: The process's exit status once :meth:`run` returns (1: the run thread failed).
        self.exit_status = 0

    def run(self) -> None:
        # Channels' worker hands each consumer a plain lambda as `send`, which
        # asgiref warns about once per consumer; nothing is wrong, so say nothing.
        warnings.filterwarnings(
            "ignore", message="async_to_sync was passed a non-async-marked callable"
        )
        # `kill -USR1 <pid>` prints every thread's stack: how to see what a stuck worker does.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # What start-up made (Django, the apps, the modules and their schemas)
        # lives as long as the process: out of the collector's sight, a full
        # collection looks only at what jobs made since, instead of pausing
        # the worker for tens of milliseconds to walk all of it again. The
        # garbage start-up left is collected first, or it would stay forever.
        gc.collect()
        gc.freeze()
        state.install(self.state)
        start_heartbeat(self.state)
        try:
            super().run()
        finally:
            stop_heartbeat()
        if self.exit_status:
            raise SystemExit(self.exit_status)

    async def handle(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        consumers = self.run_thread_consumers()
        listeners = [
            asyncio.ensure_future(self.listener(channel))
            for channel in self.channels
            if channel not in consumers
        ]
        self.state.set_idle()  # before the run thread can start a job
        run_thread = None
        if consumers:
            run_thread = threading.Thread(
                target=self._run_thread, args=(consumers, loop), name="sisy-run", daemon=True
            )
            run_thread.start()
        logger.info(
            "sisy: worker %s listening on %s", self.state.worker_id, ", ".join(self.channels)
        )
        await self._stop.wait()
        for task in listeners:
            task.cancel()
        if listeners:
            # A receive cancelled while it connects to Redis may take a while to
            # notice; it holds no job, so do not wait on it for long.
            _, pending = await asyncio.wait(listeners, timeout=self.listener_grace)
            if pending:
                logger.debug("sisy: %d listener(s) still cancelling; not waiting", len(pending))
        await self._wait_for_running_job()
        if run_thread is not None:
            # Its pop ends within RUN_THREAD_POP_TIMEOUT (or fails within
            # POP_READ_MARGIN more); a wake-up it brings back then is sent back
            # to Redis before the process exits.
            await asyncio.to_thread(run_thread.join, RUN_THREAD_JOIN_TIMEOUT)
            if run_thread.is_alive():
                logger.warning("sisy: the run thread is still busy; exiting without it")
        logger.info("sisy: worker %s stopped", self.state.worker_id)

    def run_thread_consumers(self) -> dict[str, Any]:
        """``{channel: consumer}`` for the channels the run thread pops itself; may be empty.

        The run channels (routed to :class:`~sisy.consumers.RunConsumer` or a
        subclass) go to the run thread when the layer can pop synchronously
        (:meth:`sisy.layers.RedisChannelLayer.receive_hint_now`) and every one
        of them can be handed its messages directly: no channel layer of its
        own, Channels' ``__call__`` and sisy's ``dispatch`` left as they are,
        no ``!`` in its name. Otherwise none do, so that jobs still run one at
        a time, on asgiref's thread, as Channels hands them over.
        """
        from sisy.consumers import RunConsumer, _TolerantConsumer
        from sisy.routing import routed

        if getattr(type(self.channel_layer), "receive_hint_now", None) is None:
            return {}
        routes = routed(self.application) or {}
        consumers: dict[str, Any] = {}
        for channel in self.channels:
            app = routes.get(channel)
            cls = getattr(app, "consumer_class", None)
            # as_asgi() wraps the class; a middleware made with functools.wraps
            # copies consumer_class but wraps the app.
            if not isinstance(cls, type) or getattr(app, "__wrapped__", cls) is not cls:
                # Not a consumer sisy can see (a custom router, a middleware
                # around a consumer, a channel not routed): it might run jobs.
                return {}
            if not issubclass(cls, RunConsumer):
                continue
            plain = (
                cls.channel_layer_alias is None
                and cls.__call__ is _TolerantConsumer.__call__
                and cls.dispatch is _TolerantConsumer.dispatch
                and "!" not in channel
            )
            if not plain:
                return {}
            consumer = cls(**getattr(app, "consumer_initkwargs", {}))
            consumer.scope = {"type": "channel", "channel": channel}
            consumer.channel_layer = None
            consumer.base_send = _no_send
            consumers[channel] = consumer
        return consumers

    def _run_thread(self, consumers: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        # As in asgiref's thread for synchronous consumers: an async_to_sync()
        # call in a job runs its coroutine on the worker's own event loop (and
        # its channel layer connections), not on a new loop for each call.
        SyncToAsync.threadlocal.main_event_loop = loop
        SyncToAsync.threadlocal.main_event_loop_pid = os.getpid()
        try:
            self.pop_and_run(consumers)
        except BaseException:
            # A worker whose run thread died would stay up and run nothing.
            self.exit_status = 1
            logger.exception("sisy: the run thread failed; stopping the worker")
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is done
                loop.call_soon_threadsafe(self._stop_after_failure)

    def _stop_after_failure(self) -> None:
        """Stop as on a first ``SIGTERM``, whether or not one came already (not a second signal)."""
        self.state.stopping.set()
        if self._stop is not None:
            self._stop.set()

    def pop_and_run(self, consumers: dict[str, Any]) -> None:
        """The run thread: pop a wake-up from Redis, run its job here, pop the next.

        The thread that runs the jobs is the one waiting on Redis, so a
        wake-up reaches the job without a hand-over from the event loop to
        another thread (a quarter of a millisecond of an idle worker's
        start-up, measured in ``bench/``). It pops only when it is free, so
        wake-ups stay in Redis for other workers while it runs a job.
        Failures are logged and retried with backoff, as by :meth:`listener`;
        it stops popping once the worker is stopping.
        """
        channels = list(consumers)
        pop_backoff = failed_backoff = 0.1  # Redis failing; handling failing
        for channel, consumer in consumers.items():  # the backlog, as listener() starts
            if not self._handle_safely(consumer, {"type": RUN_MESSAGE_TYPE}, channel):
                self.state.stopping.wait(failed_backoff)
                failed_backoff = min(self.max_backoff, failed_backoff * 2)
        while not self.state.stopping.is_set():
            try:
                popped = self.channel_layer.receive_hint_now(channels, RUN_THREAD_POP_TIMEOUT)
            except Exception as exc:
                # The pool's read timeout outlasts the pop: a timeout is Redis stalling.
                self._receive_failed(", ".join(channels), exc, pop_backoff)
                self.state.stopping.wait(pop_backoff)
                pop_backoff = min(self.max_backoff, pop_backoff * 2)
                continue
            pop_backoff = 0.1  # Redis answered
            if popped is None:
                continue
            channel, message = popped
            if self.state.stopping.is_set():
                self._send_back(channel, message)  # for a worker that is not stopping
                break
            if self._handle_safely(consumers[channel], message, channel):
                failed_backoff = 0.1
            else:
                # The database away, say: take no more wake-ups for a while
                # (longer each time) rather than pop and drop ten a second.
                self.state.stopping.wait(failed_backoff)
                failed_backoff = min(self.max_backoff, failed_backoff * 2)

    def _receive_failed(
        self, where: str, exc: Exception, backoff: float, quiet: bool = False
    ) -> None:
        """Log a failed receive; count a message that could not be read as dropped."""
        (logger.debug if quiet else logger.warning)(
            "sisy: receiving on %s failed (%s: %s); retrying in %.1fs",
            where,
            type(exc).__name__,
            exc,
            backoff,
        )
        if not _is_transport_error(exc):
            self.state.note_dropped()  # e.g. bytes that are not a message

    def _send_back(self, channel: str, message: Any) -> None:
        try:
            self.channel_layer.send_now(channel, message)
        except Exception as exc:  # the sweep sends it again
            logger.info("sisy: could not send back a wake-up on %s (%s)", channel, exc)

    def _handle_safely(self, consumer: Any, message: Any, channel: str) -> bool:
        """Hand ``message`` to ``consumer``; ``False`` (logged) if it raised."""
        try:
            consumer.handle_now(message)
        except Exception:
            # The database away, say: the job stays queued (or its lease
            # brings it back), and the next wake-up or the sweep finds it.
            logger.exception("sisy: handling a message on %s failed", channel)
            return False
        return True

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("sisy: second signal, exiting now; the running job's lease will expire")
            os._exit(128 + signum)
        logger.info("sisy: stopping worker %s after the running job", self.state.worker_id)
        self.state.stopping.set()
        if self._stop is not None:
            self._stop.set()

    async def _wait_for_running_job(self) -> None:
        """Wait until no consumer is inside the runner, for the grace period at most.

        Wake-ups still buffered are dropped: ``stopping`` is set, and the runner
        counts itself active before it checks ``stopping``, so none of them can
        start a job once this sees zero. When the grace period
        (:setting:`SISY_WORKER_SHUTDOWN_GRACE`) runs out first, the running job
        goes back to the queue, another worker is woken for it, and the
        process exits 0 at once (the job's thread cannot be stopped otherwise).
        """
        grace = sisy_settings.WORKER_SHUTDOWN_GRACE
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        while self.state.active > 0:
            if deadline is not None and loop.time() >= deadline:
                await asyncio.to_thread(self._release_and_exit)
            await asyncio.sleep(0.05)

    def _release_and_exit(self) -> None:
        from django.db import close_old_connections

        from sisy.dispatch import flush, wake

        close_old_connections()
        job_id = None
        try:
            runner.write_completions(self.state)  # jobs that succeeded before this one
        except Exception:
            logger.exception("sisy: could not record finished jobs; they will run again")
        try:
            runner.give_back(self.state, self.state.take_reserved())
            job_id = runner.release(self.state)
            if job_id is not None:
                channel = Job.objects.filter(pk=job_id).values_list("channel", flat=True).first()
                if channel:
                    wake(channel, [job_id])
        except Exception:
            logger.exception("sisy: could not release the running job; its lease will expire")
        flush(2.0)  # the wake-ups of the jobs given back, before os._exit() drops them
        logger.warning(
            "sisy: worker %s stopped after its %ss grace period%s",
            self.state.worker_id,
            sisy_settings.WORKER_SHUTDOWN_GRACE,
            f"; job {job_id} is queued again" if job_id else "",
        )
        stop_heartbeat()
        logging.shutdown()
        os._exit(0)

    async def listener(self, channel: str) -> None:
        scope = {"type": "channel", "channel": channel}
        backoff = 0.1
        # sisy's layer pops a wake-up in one command (no backup queue: a lost
        # wake-up is sent again by the sweep); other channels and other
        # layers receive as usual.
        receive_hint = getattr(type(self.channel_layer), "receive_hint", None)
        receive = (
            functools.partial(receive_hint, self.channel_layer)
            if receive_hint is not None and channel in self.hint_channels
            else self.channel_layer.receive
        )
        if channel != sisy_settings.HEARTBEAT_CHANNEL:
            # Start on the backlog at once: the wake-ups of jobs queued while no
            # worker ran may be gone (expired, or taken by a process that died).
            queue = self.get_or_create_application_instance(channel, scope)
            await queue.put({"type": RUN_MESSAGE_TYPE})
        while True:
            # Leave wake-ups in Redis for other workers while this one is busy.
            # The queue is looked up on every pass: should the consumer instance
            # die, Channels replaces it and the old queue would never drain.
            while self.get_or_create_application_instance(channel, scope).qsize() >= self.prefetch:
                await asyncio.sleep(0.01)
            try:
                message = await receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # With redis-py >= 8 and no socket_timeout in the layer's hosts, an
                # idle blocking pop times out every 5 s: check sisy.W003 says so.
                self._receive_failed(channel, exc, backoff, quiet=_is_read_timeout(exc))
                if not _is_read_timeout(exc):
                    await asyncio.sleep(backoff)
                    backoff = min(self.max_backoff, backoff * 2)
                continue
            backoff = 0.1
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                logger.warning("sisy: dropping a message without a type on %s", channel)
                self.state.note_dropped()
                continue
            queue = self.get_or_create_application_instance(channel, scope)
            await queue.put(message)


#: Seconds the run thread waits for a wake-up in one ``BZPOPMIN`` before it
#: looks at whether the worker is stopping (and, with several Redis servers,
#: turns to the next).
RUN_THREAD_POP_TIMEOUT = 1

#: Longest wait, at shutdown, for the run thread to end its pop (and send
#: back a wake-up it brought): the pop, its read margin, and a send's two
#: timeouts; past it the process exits anyway.
RUN_THREAD_JOIN_TIMEOUT = RUN_THREAD_POP_TIMEOUT + POP_READ_MARGIN + 2 * SEND_NOW_TIMEOUT + 0.5


def _no_send(message: Any) -> None:
    raise NotImplementedError("a consumer of a worker's channel has nowhere to send")


def _is_transport_error(exc: BaseException) -> bool:
    """Redis away or slow, as opposed to a message that could not be read."""
    import redis.exceptions

    transport = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
    return isinstance(exc, transport)


def _is_read_timeout(exc: BaseException) -> bool:
    import redis.exceptions

    return isinstance(exc, redis.exceptions.TimeoutError)
