"""Every ``SISY_*`` setting, with its default, read when it is used.

Nothing here reads Django settings at import time, so ``override_settings``
works in tests and the docs' settings page can mirror this file one to one.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

RUN_CHANNEL = "sisy.run"
HEARTBEAT_CHANNEL = "sisy.heartbeat"
CHANNEL_LAYER = "default"
HEARTBEAT_FREQUENCY = 60.0
WORKER_HEARTBEAT_INTERVAL = 5.0
WORKER_HEARTBEAT_TTL = 15.0
WORKER_KEY_PREFIX = "worker:"
REDIS_URL: str | None = None
JOB_LEASE = 30.0
MAX_ATTEMPTS = 3
REDISPATCH_AFTER = 10.0
SWEEP_MAX_WAKEUPS = 10
WORKER_PREFETCH = 10
WORKER_CLAIM_BATCH = 50
PREPARED_STATEMENTS = True
CLAIM_ASYNC_COMMIT = True
WORKER_SHUTDOWN_GRACE: float | None = 25.0
TIME_LIMIT_GRACE = 5.0
MODULES: tuple[str, ...] = ()
DEFAULT_SCHEDULE = "* * * * *"
CLOCK_BATCH = 5000
API_MAX_BODY_SIZE = 1_048_576
API_MAX_DEPTH = 32
API_MAX_ITEMS = 10_000
API_MAX_STRING_LENGTH = 65_536
API_PAGE_SIZE = 50
MAX_QUEUED_JOBS: int | None = None


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return float(value)


def _non_negative_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, not {value!r}")
    return value


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return value


class Settings:
    """sisy's settings. Each property raises ``ValueError`` naming a bad setting."""

    def _get(self, name: str, default: Any) -> Any:
        return getattr(django_settings, name, default)

    @property
    def RUN_CHANNEL(self) -> str:
        return _name("SISY_RUN_CHANNEL", self._get("SISY_RUN_CHANNEL", RUN_CHANNEL))

    @property
    def HEARTBEAT_CHANNEL(self) -> str:
        return _name(
            "SISY_HEARTBEAT_CHANNEL", self._get("SISY_HEARTBEAT_CHANNEL", HEARTBEAT_CHANNEL)
        )

    @property
    def CHANNEL_LAYER(self) -> str:
        return _name("SISY_CHANNEL_LAYER", self._get("SISY_CHANNEL_LAYER", CHANNEL_LAYER))

    @property
    def HEARTBEAT_FREQUENCY(self) -> float:
        return _positive_number(
            "SISY_HEARTBEAT_FREQUENCY",
            self._get("SISY_HEARTBEAT_FREQUENCY", HEARTBEAT_FREQUENCY),
        )

    @property
    def WORKER_HEARTBEAT_INTERVAL(self) -> float:
        return _positive_number(
            "SISY_WORKER_HEARTBEAT_INTERVAL",
            self._get("SISY_WORKER_HEARTBEAT_INTERVAL", WORKER_HEARTBEAT_INTERVAL),
        )

    @property
    def WORKER_HEARTBEAT_TTL(self) -> float:
        ttl = _positive_number(
            "SISY_WORKER_HEARTBEAT_TTL",
            self._get("SISY_WORKER_HEARTBEAT_TTL", WORKER_HEARTBEAT_TTL),
        )
        interval = self._valid_interval()
        if interval is not None and ttl <= interval:
            raise ValueError(
                "SISY_WORKER_HEARTBEAT_TTL must be longer than SISY_WORKER_HEARTBEAT_INTERVAL, "
                "or live workers flicker out of sight between two heartbeats"
            )
        return ttl

    @property
    def WORKER_KEY_PREFIX(self) -> str:
        return _name(
            "SISY_WORKER_KEY_PREFIX", self._get("SISY_WORKER_KEY_PREFIX", WORKER_KEY_PREFIX)
        )

    @property
    def REDIS_URL(self) -> str | None:
        value = self._get("SISY_REDIS_URL", REDIS_URL)
        if value is None:
            return None
        return _name("SISY_REDIS_URL", value)

    @property
    def JOB_LEASE(self) -> float:
        lease = _positive_number("SISY_JOB_LEASE", self._get("SISY_JOB_LEASE", JOB_LEASE))
        interval = self._valid_interval()
        if interval is not None and lease <= interval:
            raise ValueError(
                "SISY_JOB_LEASE must be longer than SISY_WORKER_HEARTBEAT_INTERVAL, "
                "because the worker renews the lease once per heartbeat"
            )
        return lease

    @property
    def MAX_ATTEMPTS(self) -> int:
        return _positive_int("SISY_MAX_ATTEMPTS", self._get("SISY_MAX_ATTEMPTS", MAX_ATTEMPTS))

    @property
    def REDISPATCH_AFTER(self) -> float:
        return _non_negative_number(
            "SISY_REDISPATCH_AFTER", self._get("SISY_REDISPATCH_AFTER", REDISPATCH_AFTER)
        )

    @property
    def SWEEP_MAX_WAKEUPS(self) -> int:
        return _positive_int(
            "SISY_SWEEP_MAX_WAKEUPS", self._get("SISY_SWEEP_MAX_WAKEUPS", SWEEP_MAX_WAKEUPS)
        )

    @property
    def WORKER_PREFETCH(self) -> int:
        return _positive_int(
            "SISY_WORKER_PREFETCH", self._get("SISY_WORKER_PREFETCH", WORKER_PREFETCH)
        )

    @property
    def WORKER_CLAIM_BATCH(self) -> int:
        return _positive_int(
            "SISY_WORKER_CLAIM_BATCH", self._get("SISY_WORKER_CLAIM_BATCH", WORKER_CLAIM_BATCH)
        )

    @property
    def WORKER_SHUTDOWN_GRACE(self) -> float | None:
        value = self._get("SISY_WORKER_SHUTDOWN_GRACE", WORKER_SHUTDOWN_GRACE)
        return None if value is None else _non_negative_number("SISY_WORKER_SHUTDOWN_GRACE", value)

    @property
    def TIME_LIMIT_GRACE(self) -> float:
        return _non_negative_number(
            "SISY_TIME_LIMIT_GRACE", self._get("SISY_TIME_LIMIT_GRACE", TIME_LIMIT_GRACE)
        )

    @property
    def MODULES(self) -> tuple[str, ...]:
        value = self._get("SISY_MODULES", MODULES)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"SISY_MODULES must be a list of module paths, not {value!r}")
        for item in value:
            _name("SISY_MODULES entries", item)
        return tuple(value)

    @property
    def DEFAULT_SCHEDULE(self) -> str:
        from sisy import cron

        value = _name("SISY_DEFAULT_SCHEDULE", self._get("SISY_DEFAULT_SCHEDULE", DEFAULT_SCHEDULE))
        try:
            cron.parse(value)
        except ValueError as exc:
            raise ValueError(f"SISY_DEFAULT_SCHEDULE: {exc}") from None
        return value

    @property
    def CLOCK_BATCH(self) -> int:
        return _positive_int("SISY_CLOCK_BATCH", self._get("SISY_CLOCK_BATCH", CLOCK_BATCH))

    @property
    def API_MAX_BODY_SIZE(self) -> int:
        return _positive_int(
            "SISY_API_MAX_BODY_SIZE", self._get("SISY_API_MAX_BODY_SIZE", API_MAX_BODY_SIZE)
        )

    @property
    def API_MAX_DEPTH(self) -> int:
        return _positive_int("SISY_API_MAX_DEPTH", self._get("SISY_API_MAX_DEPTH", API_MAX_DEPTH))

    @property
    def API_MAX_ITEMS(self) -> int:
        return _positive_int("SISY_API_MAX_ITEMS", self._get("SISY_API_MAX_ITEMS", API_MAX_ITEMS))

    @property
    def API_MAX_STRING_LENGTH(self) -> int:
        return _positive_int(
            "SISY_API_MAX_STRING_LENGTH",
            self._get("SISY_API_MAX_STRING_LENGTH", API_MAX_STRING_LENGTH),
        )

    @property
    def API_PAGE_SIZE(self) -> int:
        return _positive_int("SISY_API_PAGE_SIZE", self._get("SISY_API_PAGE_SIZE", API_PAGE_SIZE))

    @property
    def MAX_QUEUED_JOBS(self) -> int | None:
        value = self._get("SISY_MAX_QUEUED_JOBS", MAX_QUEUED_JOBS)
        return None if value is None else _positive_int("SISY_MAX_QUEUED_JOBS", value)

    @property
    def PREPARED_STATEMENTS(self) -> bool:
        return _bool(
            "SISY_PREPARED_STATEMENTS", self._get("SISY_PREPARED_STATEMENTS", PREPARED_STATEMENTS)
        )

    @property
    def CLAIM_ASYNC_COMMIT(self) -> bool:
        return _bool(
            "SISY_CLAIM_ASYNC_COMMIT", self._get("SISY_CLAIM_ASYNC_COMMIT", CLAIM_ASYNC_COMMIT)
        )

    def _valid_interval(self) -> float | None:
        """:setting:`SISY_WORKER_HEARTBEAT_INTERVAL`, or ``None`` where it is invalid.

        Settings compared with it are not refused for it: its own error says
        what is wrong, once.
        """
        try:
            return self.WORKER_HEARTBEAT_INTERVAL
        except ValueError:
            return None

    def validate(self) -> list[str]:
        """Read every setting once; return one message per invalid setting."""
        problems = []
        for attr in dir(type(self)):
            if attr.isupper():
                try:
                    getattr(self, attr)
                except ValueError as exc:
                    problems.append(str(exc))
        return problems


sisy_settings = Settings()
