"""System checks: stable ids, a hint on how to fix."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from sisy import checks
from sisy.modules import Module, registry

REDIS = {"BACKEND": "channels_redis.core.RedisChannelLayer"}


def ids(messages: list) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.django_db  # Django >= 6.1 runs database checks too
def test_the_test_project_is_clean() -> None:
    call_command("check", "--fail-level", "WARNING")


@override_settings(USE_TZ=False)
def test_time_zone_support_is_required() -> None:
    assert ids(checks.check_time_zone_support()) == ["sisy.E004"]


def test_auth_and_contenttypes_are_required() -> None:
    from django.apps import apps

    assert checks.check_required_apps() == []
    installed = [c.name for c in apps.get_app_configs()]
    apps.set_installed_apps([name for name in installed if name != "django.contrib.auth"])
    try:
        found = checks.check_required_apps()
    finally:
        apps.unset_installed_apps()
    assert ids(found) == ["sisy.E005"]
    assert "django.contrib.auth" in found[0].msg and "contenttypes" not in found[0].msg


@override_settings(CHANNEL_LAYERS={})
def test_missing_channel_layer() -> None:
    assert ids(checks.check_channel_layer()) == ["sisy.E001"]


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})
def test_in_memory_layer() -> None:
    assert ids(checks.check_channel_layer()) == ["sisy.W001"]


@pytest.mark.parametrize("backend", [REDIS["BACKEND"], "sisy.layers.RedisChannelLayer"])
def test_redis_8_socket_timeout(backend: str) -> None:
    import redis

    expected = ["sisy.W003"] if int(redis.__version__.split(".")[0]) >= 8 else []
    layer = {"BACKEND": backend, "CONFIG": {"hosts": ["redis://127.0.0.1:6379"]}}
    with override_settings(CHANNEL_LAYERS={"default": layer}):
        assert ids(checks.check_channel_layer()) == expected


@override_settings(
    CHANNEL_LAYERS={
        "default": {**REDIS, "CONFIG": {"hosts": [{"sentinels": [], "socket_timeout": 9}]}}
    }
)
def test_unknown_heartbeat_redis() -> None:
    assert ids(checks.check_channel_layer()) == ["sisy.W002"]


@pytest.mark.django_db
@override_settings(SISY_MAX_ATTEMPTS=0)
def test_invalid_setting_fails_manage_py_check() -> None:
    assert ids(checks.check_settings()) == ["sisy.E003"]
    with pytest.raises(SystemCheckError, match=r"sisy\.E003"):
        call_command("check")


def test_module_schema_broken_after_registration() -> None:
    class Drifting(Module):
        schema = {"type": "object"}

    registry.register("drifting", Drifting)
    try:
        Drifting.schema = {"type": 12}
        found = checks.check_modules()
        assert ids(found) == ["sisy.E002"]
        assert "drifting" in found[0].msg
    finally:
        registry.unregister("drifting")


@pytest.mark.parametrize("url", [5, ""])
def test_invalid_heartbeat_url_is_one_error_not_a_crash(url: object) -> None:
    layer = {**REDIS, "CONFIG": {"hosts": [{"address": "redis://h:6379", "socket_timeout": 9}]}}
    with override_settings(CHANNEL_LAYERS={"default": layer}, SISY_REDIS_URL=url):
        assert "sisy.W002" not in ids(checks.check_channel_layer())
        found = checks.check_settings()
    assert ids(found) == ["sisy.E003"]
    assert "SISY_REDIS_URL" in found[0].msg


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ({"address": "redis://h:6379", "socket_timeout": 10}, False),
        ({"address": "redis://h:6379", "socket_timeout": None}, False),
        ({"address": "redis://h:6379", "socket_timeout": 5}, True),
        ("redis://h:6379/0?socket_timeout=10", False),
        ("redis://h:6379/0?socket_timeout=2", True),
        (("h", 6379), True),
        ({"address": "redis://h:6379", "socket_timeout": "ten"}, True),
        ({"address": "redis://h:6379", "socket_timeout": [10]}, True),
    ],
)
def test_socket_timeout_must_outlast_the_blocking_pop(host: object, warned: bool) -> None:
    import redis

    if int(redis.__version__.split(".")[0]) < 8:
        pytest.skip("only redis-py >= 8 shortens reads by default")
    layers = {"default": {**REDIS, "CONFIG": {"hosts": [host]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert ("sisy.W003" in ids(checks.check_channel_layer())) is warned


def test_pubsub_layer_needs_no_socket_timeout() -> None:
    layer = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": ["redis://h"]},
    }
    with override_settings(CHANNEL_LAYERS={"default": layer}):
        assert "sisy.W003" not in ids(checks.check_channel_layer())


def test_project_routing_is_checked() -> None:
    assert checks.check_routing() == []  # tests/asgi.py routes sisy's channels
    with override_settings(ASGI_APPLICATION="tests.asgi_without_sisy.application"):
        found = checks.check_routing()
        assert ids(found) == ["sisy.W004"]
        assert "sisy.run, sisy.heartbeat" in found[0].msg
    with override_settings(ASGI_APPLICATION="tests.no_such_module.application"):
        assert ids(checks.check_routing()) == ["sisy.W005"]
    with override_settings(ASGI_APPLICATION=None):
        assert checks.check_routing() == []


def test_a_bad_port_in_the_layer_s_hosts_is_a_warning_not_a_crash() -> None:
    host = {"address": ("h", "x"), "socket_timeout": 10}
    layers = {"default": {"BACKEND": "sisy.layers.RedisChannelLayer", "CONFIG": {"hosts": [host]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        found = checks.check_channel_layer()
    assert ids(found) == ["sisy.W002"]
    assert "'x'" in found[0].msg
