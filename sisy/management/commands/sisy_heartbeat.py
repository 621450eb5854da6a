"""``manage.py sisy_heartbeat``: the clock, a tick every SISY_HEARTBEAT_FREQUENCY seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from sisy import clock
from sisy.conf import sisy_settings
from sisy.management.layers import channel_layer

logger = logging.getLogger("sisy.clock")


class Command(BaseCommand):
    help = (
        "Run sisy's clock: send a tick on SISY_HEARTBEAT_CHANNEL every SISY_HEARTBEAT_FREQUENCY "
        "seconds; a worker runs the scheduler pass for each. --once runs one pass in-process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Run one tick in this process, then exit."
        )
        parser.add_argument("--layer", help="Channel layer alias (default: SISY_CHANNEL_LAYER).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            report = clock.tick()
            if options["verbosity"] >= 1:
                self.stdout.write(
                    f"tick: {report.fired} task(s) fired, {report.skipped} skipped (overlap), "
                    f"{report.requeued} requeued, {report.lost} lost, "
                    f"{report.woken} wake-up(s) sent ({report.deferred} for deferred jobs now due)"
                )
            return
        layer = channel_layer(options["layer"])
        channel, frequency = sisy_settings.HEARTBEAT_CHANNEL, sisy_settings.HEARTBEAT_FREQUENCY
        if options["verbosity"] >= 1:
            self.stdout.write(f"sisy clock on {channel}: a tick every {frequency:g} s")
            self.stdout.flush()
        asyncio.run(run_clock(layer, channel, frequency))


async def run_clock(layer: Any, channel: str, frequency: float) -> None:
    """Send ticks aligned to multiples of ``frequency`` until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("sisy: clock ticking every %ss on %s", frequency, channel)
    while not stop.is_set():
        now = time.time()
        try:
            await layer.send(channel, {"type": clock.TICK_MESSAGE_TYPE, "time": now})
        except Exception as exc:  # Redis away: the next tick tries again
            logger.warning("sisy: tick not sent (%s: %s)", type(exc).__name__, exc)
        delay = frequency - (time.time() % frequency)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
