"""Thin Channels consumers: they decode a message and call the runner or the clock.

Both survive bad messages: a message with an unknown type or a malformed
body is logged and dropped, never raised into the worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from channels.consumer import SyncConsumer

from sisy import clock, runner, worker
from sisy.conf import sisy_settings

logger = logging.getLogger("sisy.consumers")


class _TolerantConsumer(SyncConsumer):
    async def dispatch(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("sisy: dropping a message without a type on %s", self._channel())
            return
        handler_name = message["type"].replace(".", "_")
        if handler_name.startswith("_") or not callable(getattr(self, handler_name, None)):
            logger.warning(
                "sisy: dropping a message of unknown type %r on %s",
                message["type"][:100],
                self._channel(),
            )
            return
        await super().dispatch(message)

    def _channel(self) -> str:
        return str(self.scope.get("channel", "?"))


class RunConsumer(_TolerantConsumer):
    """``sisy.run`` wake-ups: claim the job, run it, then drain the channel."""

    def sisy_run(self, message: dict[str, Any]) -> None:
        state = worker.ensure_running(self._channel())
        job_id = message.get("job")
        if job_id is not None and not isinstance(job_id, str):
            logger.warning("sisy: ignoring a wake-up whose job is not a string: %r", job_id)
            job_id = None
        runner.handle_wakeup(job_id, state, self._channel())


class HeartbeatConsumer(_TolerantConsumer):
    """Clock ticks: run the scheduler pass; ticks older than one period are dropped."""

    def sisy_tick(self, message: dict[str, Any]) -> None:
        worker.ensure_running(self._channel())
        sent_at = message.get("time")
        period = sisy_settings.HEARTBEAT_FREQUENCY
        if isinstance(sent_at, (int, float)) and time.time() - sent_at > period:
            logger.info(
                "sisy: dropping a tick %.1fs old (period %.1fs)", time.time() - sent_at, period
            )
            return
        clock.tick()
