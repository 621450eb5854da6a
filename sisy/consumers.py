"""Thin Channels consumers: they decode a message and call the runner or the clock.

Both survive bad messages: a message with an unknown type or a malformed
body is logged and dropped, never raised into the worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async
from channels.consumer import AsyncConsumer, SyncConsumer
from channels.exceptions import StopConsumer
from django.db import close_old_connections

from sisy import clock, runner, worker
from sisy.conf import sisy_settings

logger = logging.getLogger("sisy.consumers")


def _marked_async(send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """``send`` as a coroutine function, which is what ``async_to_sync`` expects.

    Channels' worker (``runworker``) passes a lambda that returns the
    coroutine; given it as it is, asgiref warns once per consumer.
    """
    if iscoroutinefunction(send):
        return send

    async def send_message(message: Any) -> None:
        await send(message)

    return send_message


class _TolerantConsumer(SyncConsumer):
    # The worker hands these consumers their messages. Without an alias
    # Channels would also make each instance listen on a private channel of
    # its own in Redis, and a Redis restart would kill the instance.
    channel_layer_alias = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # What Channels' consumer does without a channel layer of its own,
        # minus its general loop over several sources (a task per message
        # and asyncio.wait): one source here, so each message is awaited
        # and dispatched directly, a few event-loop turns sooner. A subclass
        # that asks for a layer of its own (for groups) gets Channels' set-up.
        if self.channel_layer_alias is not None:
            return await super().__call__(scope, receive, send)
        self.scope = scope
        self.channel_layer = None  # as Channels sets it for channel_layer_alias = None
        self.base_send = async_to_sync(_marked_async(send))
        with contextlib.suppress(StopConsumer):  # a clean exit, as in Channels
            while True:
                await self.dispatch(await receive())

    async def dispatch(self, message: Any) -> None:
        handler_name = self._handler_name(message)
        if handler_name is None:
            return
        # Not SyncConsumer.dispatch: Channels closes the thread's database
        # connections around each message there, and with CONN_MAX_AGE = 0 a
        # worker would connect again for every wake-up (about 10 ms on
        # PostgreSQL). The runner keeps healthy connections and replaces
        # broken or old ones itself (sisy.runner.refresh_connections).
        # asgiref's thread-sensitive thread, as SyncConsumer uses: there an
        # ``async_to_sync`` call (an ``async def`` task) runs on the worker's
        # own event loop. The wrapper is made once per consumer and handler.
        handler = self._sync_handlers.get(handler_name)
        if handler is None:
            handler = sync_to_async(getattr(self, handler_name), thread_sensitive=True)
            self._sync_handlers[handler_name] = handler
        await handler(message)

    def handle_now(self, message: Any) -> None:
        """Handle ``message`` in the calling thread, as :meth:`dispatch` does on its own.

        How ``sisy_worker``'s run thread hands this consumer the wake-ups it
        pops itself (see :doc:`/topics/workers`).
        """
        handler_name = self._handler_name(message)
        if handler_name is not None:
            getattr(self, handler_name)(message)

    def _handler_name(self, message: Any) -> str | None:
        """The method that handles ``message``; ``None`` (logged, counted) for none."""
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("sisy: dropping a message without a type on %s", self._channel())
            worker.ensure_running(self._channel()).note_dropped()
            return None
        handler_name: str = message["type"].replace(".", "_")
        if handler_name.startswith("_") or not callable(getattr(self, handler_name, None)):
            logger.warning(
                "sisy: dropping a message of unknown type %r on %s",
                message["type"][:100],
                self._channel(),
            )
            worker.ensure_running(self._channel()).note_dropped()
            return None
        return handler_name

    def _channel(self) -> str:
        return str(self.scope.get("channel", "?"))


class RunConsumer(_TolerantConsumer):
    """``sisy.run`` wake-ups: claim the job, run it, then drain the channel."""

    def sisy_run(self, message: dict[str, Any]) -> None:
        state = worker.ensure_running(self._channel())
        job_id = message.get("job")
        if job_id is not None and not isinstance(job_id, str):
            logger.warning("sisy: ignoring a wake-up whose job is not a string: %r", job_id)
            state.note_dropped()
            job_id = None
        runner.handle_wakeup(job_id, state, self._channel())


class HeartbeatConsumer(AsyncConsumer):
    """Clock ticks: run the clock's pass; ticks older than one period are dropped.

    A worker runs every synchronous consumer on one thread, so a tick handled
    there would wait behind a long job and arrive stale. Ticks run on a thread
    of their own instead, beside the job.
    """

    channel_layer_alias = None  # see _TolerantConsumer

    async def dispatch(self, message: Any) -> None:
        if isinstance(message, dict) and message.get("type") == clock.TICK_MESSAGE_TYPE:
            channel = str(self.scope.get("channel", "?"))
            await sync_to_async(_tick, thread_sensitive=False)(message, channel)
        else:
            kind = message.get("type") if isinstance(message, dict) else None
            logger.warning("sisy: dropping a message of type %r on the clock channel", kind)
            worker.ensure_running(str(self.scope.get("channel", "?"))).note_dropped()


def _tick(message: dict[str, Any], channel: str) -> None:
    worker.ensure_running(channel)
    sent_at = message.get("time")
    period = sisy_settings.HEARTBEAT_FREQUENCY
    age = time.time() - sent_at if isinstance(sent_at, (int, float)) else 0.0
    if age > period:
        logger.info("sisy: dropping a tick %.1fs old (period %.1fs)", age, period)
        return
    try:
        clock.tick()
    finally:
        close_old_connections()
