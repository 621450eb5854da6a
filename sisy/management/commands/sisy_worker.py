"""``manage.py sisy_worker``: a Channels worker for sisy's channels, with heartbeats."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sisy.conf import sisy_settings
from sisy.management.layers import channel_layer
from sisy.routing import channel_names
from sisy.state import WorkerState


class Command(BaseCommand):
    help = (
        "Run a worker for sisy's channels (and any others you name). It publishes its "
        "heartbeat to Redis from start-up and stops cleanly on SIGTERM/SIGINT."
    )
    leave_locale_alone = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "channels",
            nargs="*",
            help="Channels to listen on (default: SISY_RUN_CHANNEL and SISY_HEARTBEAT_CHANNEL).",
        )
        parser.add_argument("--layer", help="Channel layer alias (default: SISY_CHANNEL_LAYER).")
        parser.add_argument("--worker-id", help="Name in heartbeats (default: host-pid-random).")
        parser.add_argument(
            "--prefetch",
            type=int,
            help="Most wake-ups buffered per channel (default: SISY_WORKER_PREFETCH).",
        )

    def _routed_channels(self, application: Any, channels: list[str], named: bool) -> list[str]:
        """The channels to listen on; ``CommandError`` for one the application does not route.

        Each message on such a channel would fail (``No application
        configured for channel name``). With the default channels, a worker
        whose application routes the run channel but not the clock's listens
        on the run channel only (a warning says so): the ticks are left to
        workers that route them. Routing sisy cannot read (a custom router, a
        middleware) is trusted.
        """
        from sisy.checks import unrouted

        found = unrouted(channels, application)
        if found is None:
            return channels
        where, missing = found
        if not named and missing == [sisy_settings.HEARTBEAT_CHANNEL]:
            kept = [channel for channel in channels if channel not in missing]
            self.stderr.write(
                f"{where} does not route {missing[0]}: listening on {', '.join(kept)} only, "
                f"and leaving clock ticks to workers that route it ({_advice(missing)})."
            )
            return kept
        leave = (
            "or leave them out of the command line"
            if named
            else "or name the channels to listen on (e.g. sisy_worker sisy.run)"
        )
        raise CommandError(
            f"{where} does not route the channel(s) {', '.join(missing)}: "
            f"{_advice(missing)}, {leave}."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from sisy.worker import SisyWorker

        layer = channel_layer(options["layer"])
        if options["prefetch"] is not None and options["prefetch"] < 1:
            raise CommandError("--prefetch must be at least 1")
        channels = options["channels"] or channel_names()
        application = _application()
        channels = self._routed_channels(application, channels, named=bool(options["channels"]))
        worker_state = WorkerState(worker_id=options["worker_id"], channels=tuple(channels))
        if options["verbosity"] >= 1:
            self.stdout.write(f"sisy worker {worker_state.worker_id} on {', '.join(channels)}")
        SisyWorker(
            application=application,
            channels=channels,
            channel_layer=layer,
            worker_state=worker_state,
            prefetch=options["prefetch"],
        ).run()


def _application() -> Any:
    """The project's ASGI application when it has one, else sisy's own channel router."""
    if getattr(settings, "ASGI_APPLICATION", None):
        from channels.routing import get_default_application

        return get_default_application()
    from channels.routing import ChannelNameRouter

    from sisy.routing import channel_routes

    return ChannelNameRouter(channel_routes())


def _advice(channels: list[str]) -> str:
    """How to route ``channels``: sisy's own with its routes, others to its run consumer."""
    sisy_own = channel_names()
    own = [channel for channel in channels if channel in sisy_own]
    others = [channel for channel in channels if channel not in sisy_own]
    advice = []
    if own:
        advice.append(
            f"route {', '.join(own)} with sisy.routing.channel_routes() in the ChannelNameRouter "
            'under the "channel" key of its ProtocolTypeRouter'
        )
    if others:
        advice.append(f"route {', '.join(others)} to sisy.consumers.RunConsumer there")
    return "; ".join(advice) + " (see sisy's installation docs)"
