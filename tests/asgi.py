"""The ASGI application of the test project, routed as sisy's docs tell users to."""

import os

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

import sisy.routing  # noqa: E402  (after Django is set up)
from sisy.consumers import RunConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # sisy.emails: the channel of TASKS's "emails" queue (see settings.py).
        "channel": ChannelNameRouter(
            {**sisy.routing.channel_routes(), "sisy.emails": RunConsumer.as_asgi()}
        ),
    }
)
