"""Route sisy's channels in your ``asgi.py``::

    from channels.routing import ChannelNameRouter, ProtocolTypeRouter
    import sisy.routing

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "channel": ChannelNameRouter(sisy.routing.channel_routes()),
    })

``channel_routes()`` reads ``SISY_RUN_CHANNEL`` and ``SISY_HEARTBEAT_CHANNEL``;
merge its dict with your own channel routes if you have any.
"""

from __future__ import annotations

from typing import Any

from sisy.conf import sisy_settings
from sisy.consumers import HeartbeatConsumer, RunConsumer


def channel_routes() -> dict[str, Any]:
    """``{channel name: ASGI application}`` for ``ChannelNameRouter``."""
    return {
        sisy_settings.RUN_CHANNEL: RunConsumer.as_asgi(),
        sisy_settings.HEARTBEAT_CHANNEL: HeartbeatConsumer.as_asgi(),
    }


def routed(application: Any) -> dict[str, Any] | None:
    """``{channel name: application}`` as ``application`` routes channels; ``None`` if unknowable.

    Reads a ``ChannelNameRouter``, alone or as the ``"channel"`` entry of a
    ``ProtocolTypeRouter``; anything else (a custom router) is unknowable.
    """
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter

    if isinstance(application, ProtocolTypeRouter):
        channel_app = application.application_mapping.get("channel")
        if channel_app is None:
            return {}
        application = channel_app
    if isinstance(application, ChannelNameRouter):
        return dict(application.application_mapping)
    return None


def sisy_channels(application: Any) -> set[str]:
    """The channels ``application`` routes to sisy's consumers (wake-ups and clock ticks).

    When the routing cannot be read, :setting:`SISY_RUN_CHANNEL` and
    :setting:`SISY_HEARTBEAT_CHANNEL`.
    """
    routes = routed(application)
    if routes is None:
        return set(channel_names())
    return {
        name
        for name, app in routes.items()
        if isinstance(getattr(app, "consumer_class", None), type)
        and issubclass(app.consumer_class, (RunConsumer, HeartbeatConsumer))
    }


def channel_names() -> list[str]:
    """The channels a sisy worker listens on by default."""
    return [sisy_settings.RUN_CHANNEL, sisy_settings.HEARTBEAT_CHANNEL]
