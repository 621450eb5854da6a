"""Worker heartbeats: one Redis key per live worker, ``worker:<worker_id>``.

Every ``SISY_WORKER_HEARTBEAT_INTERVAL`` seconds (and on each status change,
at most :data:`PUBLISH_GAP` seconds later) a worker writes its
:meth:`~sisy.state.WorkerState.snapshot` as JSON with a TTL of
``SISY_WORKER_HEARTBEAT_TTL``; a worker that dies disappears when the key
expires, one that exits cleanly deletes it. The same thread renews the lease
of the job the worker is running.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections

from sisy.conf import sisy_settings
from sisy.state import WorkerState

logger = logging.getLogger("sisy.heartbeat")


#: Connect and read timeouts of sisy's heartbeat connections (seconds), unless a
#: host's own keys say otherwise.
SOCKET_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}


def redis_connection_kwargs() -> dict[str, Any]:
    """How to reach the Redis that holds heartbeats.

    ``SISY_REDIS_URL`` when set, else the first host of sisy's channel layer.
    The dict holds ``redis.Redis`` keywords, or a ``url`` and keywords for
    ``redis.Redis.from_url``, or, for a Sentinel host (the form channels-redis
    takes), ``sentinels`` (a list of ``(host, port)`` tuples), ``master_name``,
    ``sentinel_kwargs`` (a dict) and keywords for the master's connections.
    Raises ``ImproperlyConfigured`` for a host sisy cannot read.
    """
    if sisy_settings.REDIS_URL:
        return {"url": sisy_settings.REDIS_URL}
    alias = sisy_settings.CHANNEL_LAYER
    layer = getattr(settings, "CHANNEL_LAYERS", {}).get(alias, {})
    hosts = layer.get("CONFIG", {}).get("hosts") or ["redis://localhost:6379"]
    host = hosts[0]
    if isinstance(host, str):
        return {"url": host}
    if isinstance(host, (tuple, list)) and len(host) == 2:
        return {"host": host[0], "port": int(host[1])}
    if isinstance(host, dict) and "address" in host:
        extra = {k: v for k, v in host.items() if k != "address"}
        address = host["address"]
        if isinstance(address, str):
            return {"url": address, **extra}
        return {"host": address[0], "port": int(address[1]), **extra}
    if isinstance(host, dict) and ("sentinels" in host or "master_name" in host):
        return _sentinel_kwargs(alias, host)
    if isinstance(host, dict) and "host" in host:
        return dict(host)  # redis-py connection keywords, as channels-redis takes them
    raise ImproperlyConfigured(
        f"sisy cannot tell which Redis holds worker heartbeats from CHANNEL_LAYERS[{alias!r}]; "
        "set SISY_REDIS_URL"
    )


def _sentinel_kwargs(alias: str, host: dict[str, Any]) -> dict[str, Any]:
    """A Sentinel host, checked: what channels-redis needs, in the types redis-py takes."""

    def refuse(problem: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"sisy cannot tell which Redis holds worker heartbeats from "
            f"CHANNEL_LAYERS[{alias!r}]: its Sentinel host {problem}; fix it or set SISY_REDIS_URL"
        )

    master_name = host.get("master_name")
    if not isinstance(master_name, str) or not master_name:
        raise refuse("has no master_name (the name the sentinels monitor)")
    raw_sentinels = host.get("sentinels")
    if not isinstance(raw_sentinels, (list, tuple)) or not raw_sentinels:
        raise refuse("has no sentinels (a list of (host, port) pairs)")
    sentinels = []
    for entry in raw_sentinels:
        try:
            address, port = entry
            sentinels.append((str(address), int(port)))
        except (TypeError, ValueError):
            raise refuse(f"lists {entry!r} among its sentinels, not a (host, port) pair") from None
    sentinel_kwargs = host.get("sentinel_kwargs")
    if sentinel_kwargs is None:
        sentinel_kwargs = {}
    if not isinstance(sentinel_kwargs, dict):
        raise refuse("has sentinel_kwargs that are not a dict")
    return {
        **{k: v for k, v in host.items() if k not in ("sentinels", "sentinel_kwargs")},
        "sentinels": sentinels,
        "master_name": master_name,
        "sentinel_kwargs": dict(sentinel_kwargs),
    }


def connect() -> redis.Redis:
    """A client of the Redis that holds heartbeats (the current master behind Sentinel)."""
    options = redis_connection_kwargs()
    if "sentinels" in options:
        from redis.sentinel import Sentinel

        sentinel = Sentinel(
            options.pop("sentinels"),
            sentinel_kwargs={**SOCKET_TIMEOUTS, **options.pop("sentinel_kwargs")},
            **SOCKET_TIMEOUTS,
        )
        # The client asks the sentinels for the master on each new connection, and
        # drops its connections when the master it reached has become a replica.
        return sentinel.master_for(options.pop("master_name"), **options)
    options = {**SOCKET_TIMEOUTS, **options}
    url = options.pop("url", None)
    if url is not None:
        return redis.Redis.from_url(url, **options)
    return redis.Redis(**options)


def follow_master(client: redis.Redis) -> None:
    """Point a Sentinel client at the master of the moment; other clients are left alone.

    A Sentinel client asks the sentinels for the master only when it opens a
    connection, and leaves a master only once that master refuses a write
    (after a manual failover the sentinels demote the old master some ten
    seconds later). Asking again drops the idle connections to a former
    master at once. If the sentinels cannot answer, the connection stays.
    """
    from redis.sentinel import SentinelConnectionPool

    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return
    try:
        pool.get_master_address()
    except redis.RedisError as exc:
        logger.debug("sisy: the sentinels did not say which Redis is the master: %s", exc)


def key_for(worker_id: str) -> str:
    return f"{sisy_settings.WORKER_KEY_PREFIX}{worker_id}"


def publish(client: redis.Redis, state: WorkerState) -> None:
    ttl_ms = int(sisy_settings.WORKER_HEARTBEAT_TTL * 1000)
    client.set(key_for(state.worker_id), json.dumps(state.snapshot()), px=ttl_ms)


def remove(client: redis.Redis, worker_id: str) -> None:
    client.delete(key_for(worker_id))


def live_workers(client: redis.Redis | None = None) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by worker id.

    Each dict is the JSON the worker wrote (``worker_id``, ``status``,
    ``hostname``, ``job_id``/``job_title`` while running, ...).
    """
    client = client or connect()
    prefix = sisy_settings.WORKER_KEY_PREFIX
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    keys = sorted(client.scan_iter(match=pattern, count=1000))
    workers = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        for key, raw in zip(chunk, client.mget(chunk), strict=True):
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                payload = json.loads(raw)
            except ValueError:
                logger.warning("sisy: ignoring a heartbeat that is not JSON at %r", key)
                continue
            if isinstance(payload, dict):
                name = key.decode() if isinstance(key, bytes) else str(key)
                payload.setdefault("worker_id", name[len(prefix) :])
                workers.append(payload)
    return sorted(workers, key=lambda w: str(w.get("worker_id")))


#: Least time between two heartbeats a worker publishes (seconds).
PUBLISH_GAP = 0.1


class HeartbeatThread(threading.Thread):
    """Publishes ``state`` until stopped, and calls ``on_beat`` (lease renewal) each beat."""

    def __init__(
        self,
        state: WorkerState,
        on_beat: Callable[[WorkerState], None] | None = None,
    ) -> None:
        super().__init__(name="sisy-heartbeat", daemon=True)
        self.state = state
        self.on_beat = on_beat
        self._stop_event = threading.Event()
        self._client: redis.Redis | None = None
        self._last_error = 0.0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop beating and delete the worker's key (a clean exit)."""
        self._stop_event.set()
        self.state.changed.set()
        if self.is_alive():
            self.join(timeout)
        try:
            remove(self._client or connect(), self.state.worker_id)
        except Exception as exc:
            logger.warning(
                "sisy: could not remove heartbeat key of %s: %s", self.state.worker_id, exc
            )

    def run(self) -> None:
        interval = sisy_settings.WORKER_HEARTBEAT_INTERVAL
        next_beat = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            self.state.changed.clear()
            due = now >= next_beat
            self._publish(follow=due)
            if due:
                next_beat = now + interval
                self._beat()
            # Wake early on a status change so "in_progress" shows at once, then
            # wait PUBLISH_GAP before publishing it: a short job is over by then
            # (one heartbeat for its start and end, none on its critical path),
            # and a worker running hundreds of jobs a second publishes ten times
            # a second, not hundreds.
            if self.state.changed.wait(max(0.0, next_beat - time.monotonic())):
                self._stop_event.wait(PUBLISH_GAP)

    def _publish(self, follow: bool = False) -> None:
        try:
            if self._client is None:
                self._client = connect()
            elif follow:  # once a beat: a Sentinel master may have changed
                follow_master(self._client)
            publish(self._client, self.state)
        except Exception as exc:  # Redis down: keep working, say so now and then
            self._client = None
            if time.monotonic() - self._last_error > 60:
                self._last_error = time.monotonic()
                logger.warning("sisy: worker heartbeat not published: %s", exc)

    def _beat(self) -> None:
        if self.on_beat is None:
            return
        try:
            self.on_beat(self.state)
        except Exception:
            logger.exception("sisy: heartbeat callback failed")
        finally:
            close_old_connections()
