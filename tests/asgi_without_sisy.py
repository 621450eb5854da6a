"""An ASGI application that forgets sisy's channels (for check sisy.W004)."""

from channels.consumer import SyncConsumer
from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.asgi import get_asgi_application

application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "channel": ChannelNameRouter({"thumbnails": SyncConsumer.as_asgi()}),
    }
)
