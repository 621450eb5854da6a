"""A channels-redis layer whose ``send`` costs one Redis round trip instead of four.

channels-redis's :class:`~channels_redis.core.RedisChannelLayer` sends a
message with four commands, each waiting for the one before:
``ZREMRANGEBYSCORE`` (drop expired messages), ``ZCOUNT`` (the capacity check),
``ZADD`` and ``EXPIRE``. :class:`RedisChannelLayer` here runs the same four
commands as one Lua script, so a send is one round trip, and the capacity
check and the add can no longer interleave with another sender's.

It also offers :meth:`RedisChannelLayer.receive_hint`, the receive sisy's
workers use for wake-ups and clock ticks: one blocking pop, without the
backup queue channels-redis keeps for messages that must not be lost.

Everything else is channels-redis's own: the keys, the serialised message,
the choice of server (round-robin for a general channel, consistent hash for
a process-local one), receive, groups, flush. A process using it and one using
channels-redis's class read each other's messages. Configure it as the
``BACKEND`` of the layer; its ``CONFIG`` is channels-redis's.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as _CoreLayer
from redis.exceptions import NoScriptError

#: KEYS[1]: the channel's sorted set. ARGV: the oldest score kept, the
#: channel's capacity, the message's score, the message, the key's expiry.
#: Returns 0 when the channel is full (nothing is added), 1 otherwise.
SEND_SCRIPT = b"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
SEND_SCRIPT_SHA = hashlib.sha1(SEND_SCRIPT, usedforsecurity=False).hexdigest()

#: KEYS[1]: a channel's sorted set; KEYS[2]: channels-redis's backup queue of
#: it (messages popped by a receive that had not finished with them). Moves
#: the backup's messages back onto the channel, with their scores, and
#: returns how many there were.
RESTORE_SCRIPT = b"""
local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #held, 2 do
    redis.call('ZADD', KEYS[1], held[i + 1], held[i])
end
redis.call('DEL', KEYS[2])
return #held / 2
"""
RESTORE_SCRIPT_TEXT = RESTORE_SCRIPT.decode()


class RedisChannelLayer(_CoreLayer):
    """channels-redis's core layer, with a send that is one round trip (a Lua script).

    It adds :meth:`send_now`, the same send for synchronous code: what
    :func:`sisy.submit` uses, so that a wake-up reaches Redis before
    ``submit`` returns without a hop through an event loop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_clients: dict[int, redis.Redis] = {}
        self._blocking_clients: dict[tuple[int, int], redis.Redis] = {}
        self._sync_lock = threading.Lock()
        self._restored: set[tuple[str, int]] = set()

    def _send_args(self, channel: str, message: dict[str, Any]) -> tuple[str, int, tuple[Any, ...]]:
        """The key, the server index and the script's arguments for one send."""
        # The same checks as channels-redis's send.
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        if "!" in channel:  # process-local: the full name travels in the message
            message = {**message, "__asgi_channel__": channel}
            key = self.prefix + self.non_local_name(channel)
            index = self.consistent_hash(channel)
        else:
            key = self.prefix + channel
            index = next(self._send_index_generator)
        now = time.time()
        args = (
            int(now) - int(self.expiry),
            self.get_capacity(channel),
            repr(now),
            self.serialize(message),
            int(self.expiry),
        )
        return key, index, args

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` on ``channel``; ``ChannelFull`` when it is at capacity."""
        key, index, args = self._send_args(channel, message)
        connection = self.connection(index)
        try:
            added = await connection.evalsha(SEND_SCRIPT_SHA, 1, key, *args)
        except NoScriptError:  # a new or restarted server: load the script once
            await connection.script_load(SEND_SCRIPT)
            added = await connection.evalsha(SEND_SCRIPT_SHA, 1, key, *args)
        _check_added(added)

    def send_now(self, channel: str, message: dict[str, Any]) -> None:
        """:meth:`send` for synchronous code: one round trip, in the calling thread.

        It uses a synchronous connection pool of its own per server (safe to
        share between threads, renewed after a fork), built from the same
        ``hosts`` entry, with :data:`SEND_NOW_TIMEOUT` to connect and to read
        and no retry: a Redis that is away or slow raises at once
        (``redis.exceptions.ConnectionError`` or ``TimeoutError``) instead of
        holding the caller. ``ChannelFull`` as for :meth:`send`.
        """
        key, index, args = self._send_args(channel, message)
        client = self._sync_client(index)
        try:
            added = client.evalsha(SEND_SCRIPT_SHA, 1, key, *args)
        except NoScriptError:
            client.script_load(SEND_SCRIPT)
            added = client.evalsha(SEND_SCRIPT_SHA, 1, key, *args)
        _check_added(added)

    async def receive_hint(self, channel: str) -> dict[str, Any]:
        """Receive the next message on ``channel``, a message that may be lost.

        One ``BZPOPMIN``, where :meth:`receive` costs three commands (and the
        last of them waits for the pop): channels-redis first moves the
        channel's backup queue back onto it (a script), and copies each
        message it pops to that backup until a later command removes it, so
        that a receive cancelled at the wrong moment loses nothing. A sisy
        wake-up or clock tick needs none of that: the database row is the
        truth, and a lost wake-up is sent again by the sweep (a lost tick,
        by the next tick). Only for channel names without ``!`` (what sisy
        listens on); others go to :meth:`receive`. The messages are the ones
        :meth:`send` (or channels-redis's) writes. The first receive on each
        channel and server moves back onto the channel whatever channels-redis's
        receive left in its backup queue there, as that receive does.
        """
        if "!" in channel:
            return await self.receive(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name not valid"
        key = self.prefix + channel
        while True:
            index = next(self._receive_index_generator)
            connection = self.connection(index)
            if (key, index) not in self._restored:
                await connection.eval(RESTORE_SCRIPT, 2, key, self._backup_channel_name(key))
                self._restored.add((key, index))
            popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
            if popped is not None:
                message: dict[str, Any] = self.deserialize(popped[1])
                message.pop("__asgi_channel__", None)  # group_send's, as receive drops it
                return message

    def receive_hint_now(
        self, channels: Sequence[str], timeout: int
    ) -> tuple[str, dict[str, Any]] | None:
        """:meth:`receive_hint` for synchronous code, on several channels at once.

        One ``BZPOPMIN`` on the channels' keys, in the calling thread, waiting
        at most ``timeout`` seconds (a whole number, at least 1) on one server;
        the servers take turns from one call to the next, as for
        :meth:`receive`. Returns the channel and its message, or ``None``
        when none came. What ``sisy_worker``'s run thread uses (see
        :doc:`/topics/workers`); channel names without ``!`` only. Its
        connections (one pool per server, kept apart from :meth:`send_now`'s)
        wait ``timeout`` plus :data:`POP_READ_MARGIN` for an answer before
        raising ``redis.exceptions.TimeoutError``, and never retry a command
        (a retried pop could lose what the first one took).
        """
        keys: dict[str, str] = {}
        for channel in channels:
            assert "!" not in channel, "process-local channels are received with receive()"
            assert self.require_valid_channel_name(channel, receive=True), "Channel name not valid"
            keys[self.prefix + channel] = channel
        index = next(self._receive_index_generator)
        client = self._blocking_client(index, timeout)
        for key in keys:
            if (key, index) not in self._restored:
                client.eval(RESTORE_SCRIPT_TEXT, 2, key, self._backup_channel_name(key))
                self._restored.add((key, index))
        popped: Any = client.bzpopmin(list(keys), timeout=timeout)
        if popped is None:
            return None
        key_bytes, data = popped[0], popped[1]
        message: dict[str, Any] = self.deserialize(data)
        message.pop("__asgi_channel__", None)
        return keys[key_bytes.decode() if isinstance(key_bytes, bytes) else key_bytes], message

    def _blocking_client(self, index: int, timeout: int) -> redis.Redis:
        client = self._blocking_clients.get((index, timeout))
        if client is None:
            with self._sync_lock:
                client = self._blocking_clients.get((index, timeout))
                if client is None:
                    pool = sync_pool(self.hosts[index], read_timeout=timeout + POP_READ_MARGIN)
                    client = redis.Redis(connection_pool=pool)
                    self._blocking_clients[(index, timeout)] = client
        return client

    async def close_pools(self) -> None:
        """Close channels-redis's pools, then :meth:`send_now`'s and :meth:`receive_hint_now`'s."""
        await super().close_pools()
        with self._sync_lock:
            clients = [*self._sync_clients.values(), *self._blocking_clients.values()]
            self._sync_clients, self._blocking_clients = {}, {}
        for client in clients:
            # Idle connections only: a pop under way in sisy_worker's run
            # thread ends on its own, and its client is dropped from here.
            client.connection_pool.disconnect(inuse_connections=False)

    def _sync_client(self, index: int) -> redis.Redis:
        client = self._sync_clients.get(index)
        if client is None:
            with self._sync_lock:
                client = self._sync_clients.get(index)
                if client is None:
                    client = redis.Redis(connection_pool=sync_pool(self.hosts[index]))
                    self._sync_clients[index] = client
        return client


def _check_added(added: Any) -> None:
    """``ChannelFull`` for the script's 0; an error for anything but its 1."""
    if added == 0:
        raise ChannelFull()
    if added != 1:  # not the script's answer: say so rather than claim a send
        raise RuntimeError(f"unexpected answer to a send from Redis: {added!r}")


#: Seconds :meth:`RedisChannelLayer.send_now` waits for Redis to accept a
#: connection, and then for its answer.
SEND_NOW_TIMEOUT = 0.5


#: Seconds :meth:`RedisChannelLayer.receive_hint_now` waits for Redis's answer
#: beyond the pop's own wait, before it gives up on the connection.
POP_READ_MARGIN = 2.0

#: ``hosts`` options that hold objects made for redis-py's asyncio client (a
#: retry policy, a connection or parser class, ...): a synchronous pool
#: cannot use them, so :func:`sync_pool` leaves them out.
ASYNC_ONLY_OPTIONS = frozenset(
    {
        "retry",
        "connection_class",
        "parser_class",
        "redis_connect_func",
        "encoder_class",
        "event_dispatcher",
        "credential_provider",
    }
)


def sync_pool(host: dict[str, Any], read_timeout: float = SEND_NOW_TIMEOUT) -> redis.ConnectionPool:
    """A synchronous pool for one ``hosts`` entry, as channels-redis builds its own.

    Every timeout is :data:`SEND_NOW_TIMEOUT`, whatever the entry or its
    address's query string says (the entry's ``socket_timeout`` is meant for
    the blocking receive), but reading a server's answer, which waits
    ``read_timeout`` seconds; no retry, for the sentinels too (the entry's
    ``retry_on_timeout`` and ``retry_on_error`` are left out). The options
    in :data:`ASYNC_ONLY_OPTIONS` are left out; the others are the entry's.
    """
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
    from redis.retry import Retry

    options = {key: value for key, value in host.items() if key not in ASYNC_ONLY_OPTIONS}
    if "address" in options:
        # What the address says, then the timeouts (from_url would let the
        # address's query string override them).
        options.update(parse_url(options.pop("address")))
    for key in ("retry_on_timeout", "retry_on_error"):  # given, or in the query string
        options.pop(key, None)
    timeouts = {"socket_timeout": SEND_NOW_TIMEOUT, "socket_connect_timeout": SEND_NOW_TIMEOUT}
    options.update(timeouts, socket_timeout=read_timeout)
    master_name = options.pop("master_name", None)
    if master_name is None:
        return redis.ConnectionPool(**options)
    from redis.sentinel import Sentinel, SentinelConnectionPool

    asked = options.pop("sentinel_kwargs", None) or {}
    sentinel_options = {
        **{key: value for key, value in asked.items() if key not in ASYNC_ONLY_OPTIONS},
        **timeouts,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = Sentinel(options.pop("sentinels"), sentinel_kwargs=sentinel_options)
    return SentinelConnectionPool(master_name, sentinel, **options)
