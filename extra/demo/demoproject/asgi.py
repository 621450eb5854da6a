"""ASGI application of the demo: HTTP for the JSON views, and sisy's channels for workers."""

import os

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demoproject.settings")
django_asgi_app = get_asgi_application()

import sisy.routing  # noqa: E402  (after Django is set up)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "channel": ChannelNameRouter(sisy.routing.channel_routes()),
    }
)
