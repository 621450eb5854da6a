"""System checks (``manage.py check``): misconfiguration is caught at start-up, not at 3 a.m."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from sisy.conf import sisy_settings

IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Error(problem, hint="See sisy's settings reference.", id="sisy.E003")
        for problem in sisy_settings.validate()
    ]


@checks.register()
def check_time_zone_support(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if getattr(settings, "USE_TZ", True):
        return []
    return [
        checks.Error(
            "sisy schedules Tasks in aware datetimes, and USE_TZ is False.",
            hint="Set USE_TZ = True (Django's default); schedules then follow TIME_ZONE.",
            id="sisy.E004",
        )
    ]


@checks.register()
def check_required_apps(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.apps import apps

    missing = [
        app
        for app in ("django.contrib.auth", "django.contrib.contenttypes")
        if not apps.is_installed(app)
    ]
    if not missing:
        return []
    return [
        checks.Error(
            f"sisy needs {' and '.join(missing)} in INSTALLED_APPS.",
            hint="API tokens belong to users, and the API and the admin check their "
            "permissions; add the missing apps.",
            id="sisy.E005",
        )
    ]


@checks.register()
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        alias = sisy_settings.CHANNEL_LAYER
    except ValueError:
        return []  # reported by sisy.E003
    layer = getattr(settings, "CHANNEL_LAYERS", {}).get(alias)
    if not layer:
        return [
            checks.Error(
                f"sisy needs a channel layer, and CHANNEL_LAYERS has no {alias!r} entry.",
                hint='Add a Redis channel layer: CHANNEL_LAYERS = {"default": {"BACKEND": '
                '"sisy.layers.RedisChannelLayer", "CONFIG": {"hosts": [{"address": '
                '"redis://...", "socket_timeout": 10}]}}}.',
                id="sisy.E001",
            )
        ]
    messages: list[checks.CheckMessage] = []
    if layer.get("BACKEND") == IN_MEMORY_LAYER:
        messages.append(
            checks.Warning(
                f"CHANNEL_LAYERS[{alias!r}] is the in-memory layer: workers in other processes "
                "never receive its messages.",
                hint="Use sisy.layers.RedisChannelLayer (or channels_redis's) for any "
                "deployment with separate worker processes.",
                id="sisy.W001",
            )
        )
    else:
        messages.extend(_check_socket_timeout(alias, layer))
        from sisy.heartbeat import redis_connection_kwargs

        if _valid_redis_url():  # else sisy.E003 reports it
            try:
                redis_connection_kwargs()
            except (ImproperlyConfigured, ValueError) as exc:  # ValueError: a port, say
                messages.append(checks.Warning(str(exc), id="sisy.W002"))
    return messages


def _valid_redis_url() -> bool:
    """Whether :setting:`SISY_REDIS_URL` is valid (unset included)."""
    try:
        _ = sisy_settings.REDIS_URL
    except ValueError:
        return False
    return True


@checks.register()
def check_modules(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from sisy.modules import compile_schema, registry

    messages: list[checks.CheckMessage] = []
    for name, module_class in registry.items():
        try:
            compile_schema(name, module_class.schema)
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    hint="Fix the module's `schema`; it must be a valid JSON Schema.",
                    obj=module_class,
                    id="sisy.E002",
                )
            )
    return messages


CORE_LAYER = "channels_redis.core.RedisChannelLayer"
#: Layers that pop with channels-redis's blocking pop and its timeout (sisy's
#: receive_hint too).
CORE_LAYERS = (CORE_LAYER, "sisy.layers.RedisChannelLayer")
#: channels-redis's RedisChannelLayer waits this long in one blocking pop.
BLOCKING_POP_SECONDS = 5


def _check_socket_timeout(alias: str, layer: dict[str, Any]) -> list[checks.CheckMessage]:
    """redis-py 8 reads time out after 5 s by default: the layer's 5 s blocking pop fails."""
    import redis

    if int(redis.__version__.split(".")[0]) < 8 or layer.get("BACKEND") not in CORE_LAYERS:
        return []
    hosts = layer.get("CONFIG", {}).get("hosts") or ["redis://localhost:6379"]
    if all(_timeout_outlasts_pop(host) for host in hosts):
        return []
    return [
        checks.Warning(
            f"CHANNEL_LAYERS[{alias!r}] hosts need a socket_timeout longer than "
            f"{BLOCKING_POP_SECONDS} s: with redis-py {redis.__version__} every idle receive "
            "fails after 5 seconds otherwise.",
            hint='Write each host as {"address": "redis://...", "socket_timeout": 10}.',
            id="sisy.W003",
        )
    ]


def _timeout_outlasts_pop(host: Any) -> bool:
    from urllib.parse import parse_qs, urlsplit

    if isinstance(host, dict):
        if "socket_timeout" in host:
            value = host["socket_timeout"]
            try:
                return value is None or float(value) > BLOCKING_POP_SECONDS
            except (TypeError, ValueError):
                return False  # not a number of seconds: redis-py cannot use it either
        host = host.get("address")
    if isinstance(host, str):
        query = parse_qs(urlsplit(host).query)
        for value in query.get("socket_timeout", []):
            try:
                return float(value) > BLOCKING_POP_SECONDS
            except ValueError:
                return False
    return False


@checks.register()
def check_routing(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``runworker`` runs the project's ASGI application: sisy's channels must be routed in it."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        return []  # sisy_worker then routes sisy's own channels itself
    from django.utils.module_loading import import_string

    try:
        application = import_string(path)
    except Exception as exc:
        return [
            checks.Warning(
                f"ASGI_APPLICATION {path!r} cannot be loaded ({type(exc).__name__}: {exc}), so "
                "sisy cannot tell whether its channels are routed.",
                id="sisy.W005",
            )
        ]
    routes = _channel_routes(application)
    if routes is None:
        return []  # a router sisy cannot look into: trust it
    try:
        wanted = [sisy_settings.RUN_CHANNEL, sisy_settings.HEARTBEAT_CHANNEL]
    except ValueError:
        return []  # reported by sisy.E003
    missing = [channel for channel in wanted if channel not in routes]
    if not missing:
        return []
    return [
        checks.Warning(
            f"{path} does not route sisy's channel(s) {', '.join(missing)}: workers started "
            "with runworker or sisy_worker would drop their messages.",
            hint='Add "channel": ChannelNameRouter(sisy.routing.channel_routes()) to its '
            "ProtocolTypeRouter (merged with your own channel routes, if any).",
            id="sisy.W004",
        )
    ]


def unrouted(channels: list[str], application: Any = None) -> tuple[str, list[str]] | None:
    """Which of ``channels`` the application that workers run does not route, if known.

    ``(what that application is, the channels missing)``; ``None`` when all
    are routed, or when the routing cannot be read (a custom router; an
    ``ASGI_APPLICATION`` that does not load, which sisy.W005 reports).
    ``application`` is that application when the caller has it loaded (as
    ``sisy_worker`` has); otherwise ``ASGI_APPLICATION`` is loaded, and
    without that setting workers route only sisy's own channels.
    """
    from django.utils.module_loading import import_string

    from sisy.routing import channel_names

    path = getattr(settings, "ASGI_APPLICATION", None)
    where = str(path) if path else "sisy's own router (ASGI_APPLICATION is not set)"
    if application is not None:
        routes = _channel_routes(application)
    elif path:
        try:
            routes = _channel_routes(import_string(path))
        except Exception:
            return None
    else:
        try:
            routes = set(channel_names())
        except ValueError:
            return None  # reported by sisy.E003
    if routes is None:
        return None
    missing = [channel for channel in channels if channel not in routes]
    return (where, missing) if missing else None


def _channel_routes(application: Any) -> set[str] | None:
    """The channel names ``application`` routes; None if unknowable."""
    from sisy.routing import routed

    routes = routed(application)
    return None if routes is None else set(routes)
