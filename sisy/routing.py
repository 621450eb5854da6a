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


def channel_names() -> list[str]:
    """The channels a sisy worker listens on by default."""
    return [sisy_settings.RUN_CHANNEL, sisy_settings.HEARTBEAT_CHANNEL]
