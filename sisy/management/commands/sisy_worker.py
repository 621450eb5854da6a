"""``manage.py sisy_worker``: a Channels worker for sisy's channels, with heartbeats."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sisy.management.layers import channel_layer
from sisy.routing import channel_names, routed
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

    def handle(self, *args: Any, **options: Any) -> None:
        from sisy.worker import SisyWorker

        layer = channel_layer(options["layer"])
        if options["prefetch"] is not None and options["prefetch"] < 1:
            raise CommandError("--prefetch must be at least 1")
        channels = options["channels"] or channel_names()
        application = _application()
        _check_routed(application, channels)
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


def _check_routed(application: Any, channels: list[str]) -> None:
    """Refuse to start on a channel the application is known not to route.

    Its every message would fail (``No application configured for channel
    name``) and its jobs would wait for nothing. An application whose routes
    sisy cannot see (a custom router, a middleware) is trusted.
    """
    routes = routed(application)
    if routes is None:
        return
    missing = [channel for channel in channels if channel not in routes]
    if missing:
        where = (
            settings.ASGI_APPLICATION
            if getattr(settings, "ASGI_APPLICATION", None)
            else ("sisy's own router (no ASGI_APPLICATION is set)")
        )
        raise CommandError(
            f"{where} does not route the channel(s) {', '.join(missing)}: route each to "
            "sisy.consumers.RunConsumer in its ChannelNameRouter (see sisy's docs on "
            "channels), or leave them out."
        )
