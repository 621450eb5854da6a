"""Settings are read when used, so override_settings works; bad values are named."""

from __future__ import annotations

import pytest
from django.test import override_settings

from sisy.conf import sisy_settings


def test_defaults() -> None:
    assert sisy_settings.RUN_CHANNEL == "sisy.run"
    assert sisy_settings.HEARTBEAT_CHANNEL == "sisy.heartbeat"
    assert sisy_settings.HEARTBEAT_FREQUENCY == 60
    assert sisy_settings.WORKER_KEY_PREFIX == "worker:"
    assert sisy_settings.MAX_ATTEMPTS == 3


def test_overrides_apply_at_once() -> None:
    with override_settings(SISY_RUN_CHANNEL="jobs.encode", SISY_MAX_ATTEMPTS=7):
        assert sisy_settings.RUN_CHANNEL == "jobs.encode"
        assert sisy_settings.MAX_ATTEMPTS == 7
    assert sisy_settings.RUN_CHANNEL == "sisy.run"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SISY_HEARTBEAT_FREQUENCY", 0, "SISY_HEARTBEAT_FREQUENCY must be a positive number"),
        ("SISY_MAX_ATTEMPTS", "3", "SISY_MAX_ATTEMPTS must be an integer >= 1"),
        ("SISY_RUN_CHANNEL", "", "SISY_RUN_CHANNEL must be a non-empty string"),
        ("SISY_MODULES", "app.mods", "SISY_MODULES must be a list of module paths"),
        ("SISY_WORKER_HEARTBEAT_TTL", 0.5, "must be longer than SISY_WORKER_HEARTBEAT_INTERVAL"),
        ("SISY_JOB_LEASE", 0.1, "SISY_JOB_LEASE must be longer than"),
        ("SISY_REDISPATCH_AFTER", -1, "SISY_REDISPATCH_AFTER must be a number >= 0"),
        ("SISY_PREPARED_STATEMENTS", "no", "SISY_PREPARED_STATEMENTS must be True or False"),
        ("SISY_CLAIM_ASYNC_COMMIT", 1, "SISY_CLAIM_ASYNC_COMMIT must be True or False"),
    ],
)
def test_invalid_values_name_the_setting(name: str, value: object, message: str) -> None:
    with override_settings(**{name: value}):
        problems = sisy_settings.validate()
    assert any(message in problem for problem in problems), problems


@pytest.mark.parametrize("interval", [0, "5"])
def test_an_invalid_interval_is_reported_once(interval: object) -> None:
    """The TTL and the lease are compared with the interval, but its error is its own."""
    with override_settings(SISY_WORKER_HEARTBEAT_INTERVAL=interval):
        problems = sisy_settings.validate()
    assert len(problems) == 1, problems
    assert problems[0].startswith("SISY_WORKER_HEARTBEAT_INTERVAL must be")
