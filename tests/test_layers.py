"""sisy.layers.RedisChannelLayer on a real Redis: channels-redis's behaviour in one round trip."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis as redis_lib
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as CoreLayer

from sisy.layers import POP_READ_MARGIN, SEND_NOW_TIMEOUT, RedisChannelLayer

#: channels-redis's key for the channel sisy.test: its prefix, then the name.
KEY = "asgisisy.test"


def hosts(redis_url: str) -> list[dict[str, Any]]:
    return [{"address": redis_url, "socket_timeout": 10}]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _closing(*layers: Any) -> None:
    for layer in layers:
        await layer.close_pools()


def test_a_message_sent_by_one_layer_is_received_by_the_other(redis, redis_url: str) -> None:
    async def go() -> list[Any]:
        ours, core = RedisChannelLayer(hosts(redis_url)), CoreLayer(hosts(redis_url))
        try:
            # Two channels: two layers receiving on one channel in one process
            # would race on channels-redis's in-flight backup of that channel.
            await ours.send("sisy.one", {"type": "a", "n": 1})
            await core.send("sisy.two", {"type": "b", "n": 2})
            return [await core.receive("sisy.one"), await ours.receive("sisy.two")]
        finally:
            await _closing(ours, core)

    assert run(go()) == [{"type": "a", "n": 1}, {"type": "b", "n": 2}]


def test_one_round_trip_per_send(redis, redis_url: str) -> None:
    redis.config_resetstat()

    async def go() -> None:
        layer = RedisChannelLayer(hosts(redis_url))
        try:
            for n in range(5):
                await layer.send("sisy.test", {"type": "a", "n": n})
        finally:
            await layer.close_pools()

    run(go())
    stats = redis.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items()}
    # The first send loads the script (EVALSHA answers NOSCRIPT on a new server).
    # The script's own commands are counted too; none ran on its own.
    assert calls["cmdstat_zadd"] == 5 and calls["cmdstat_expire"] == 5
    assert "cmdstat_zcount" not in calls
    assert calls["cmdstat_evalsha"] - calls.get("cmdstat_script|load", 0) == 5
    assert redis.zcard(KEY) == 5


def test_capacity_is_checked_and_nothing_is_added_past_it(redis, redis_url: str) -> None:
    async def go() -> int:
        layer = RedisChannelLayer(hosts(redis_url), capacity=3)
        try:
            for n in range(3):
                await layer.send("sisy.test", {"type": "a", "n": n})
            with pytest.raises(ChannelFull):
                await layer.send("sisy.test", {"type": "a", "n": 3})
            first = await layer.receive("sisy.test")
            await layer.send("sisy.test", {"type": "a", "n": 4})  # room again
            return int(first["n"])
        finally:
            await layer.close_pools()

    assert run(go()) == 0
    assert redis.zcard(KEY) == 3


def test_per_channel_capacity_applies(redis, redis_url: str) -> None:
    async def go() -> None:
        layer = RedisChannelLayer(hosts(redis_url), channel_capacity={"sisy.small": 1})
        try:
            await layer.send("sisy.small", {"type": "a"})
            with pytest.raises(ChannelFull):
                await layer.send("sisy.small", {"type": "a"})
            await layer.send("sisy.large", {"type": "a"})
            await layer.send("sisy.large", {"type": "a"})
        finally:
            await layer.close_pools()

    run(go())


def test_expired_messages_are_dropped_and_the_key_expires(redis, redis_url: str) -> None:
    # A message older than `expiry` seconds, left by a sender long ago.
    redis.zadd(KEY, {b"stale": time.time() - 120})
    layer = RedisChannelLayer(hosts(redis_url), expiry=60)

    async def send() -> None:
        await layer.send("sisy.test", {"type": "fresh"})
        await layer.close_pools()

    async def receive() -> Any:
        try:
            return await layer.receive("sisy.test")
        finally:
            await layer.close_pools()

    run(send())
    assert redis.zcard(KEY) == 1
    assert 0 < redis.ttl(KEY) <= 60
    assert run(receive()) == {"type": "fresh"}


def test_process_local_channels(redis, redis_url: str) -> None:
    async def go() -> Any:
        layer = RedisChannelLayer(hosts(redis_url))
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "reply", "n": 7})
            return await layer.receive(channel)
        finally:
            await layer.close_pools()

    assert run(go()) == {"type": "reply", "n": 7}


def test_a_server_that_forgot_the_script_gets_it_again(redis, redis_url: str) -> None:
    async def go() -> None:
        layer = RedisChannelLayer(hosts(redis_url))
        try:
            await layer.send("sisy.test", {"type": "a"})
            redis.script_flush()  # as after a restart
            await layer.send("sisy.test", {"type": "b"})
        finally:
            await layer.close_pools()

    run(go())
    assert redis.zcard(KEY) == 2


def test_bad_messages_are_refused_as_by_channels_redis(redis_url: str) -> None:
    async def go() -> None:
        layer = RedisChannelLayer(hosts(redis_url))
        try:
            with pytest.raises(AssertionError):
                await layer.send("sisy.test", ["not", "a", "dict"])  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await layer.send("bad channel name", {"type": "a"})
        finally:
            await layer.close_pools()

    run(go())


def test_send_now_is_the_same_send_from_synchronous_code(redis, redis_url: str) -> None:
    layer = RedisChannelLayer(hosts(redis_url), capacity=2)
    redis.config_resetstat()
    layer.send_now("sisy.test", {"type": "a", "n": 1})
    redis.script_flush()  # as after a restart: loaded again
    layer.send_now("sisy.test", {"type": "a", "n": 2})
    with pytest.raises(ChannelFull):
        layer.send_now("sisy.test", {"type": "a", "n": 3})
    calls = {name: value["calls"] for name, value in redis.info("commandstats").items()}
    assert calls["cmdstat_zadd"] == 2 and "cmdstat_zcount" not in calls
    assert 0 < redis.ttl(KEY) <= 60

    async def receive() -> list[Any]:
        core = CoreLayer(hosts(redis_url))
        try:
            return [await core.receive("sisy.test"), await core.receive("sisy.test")]
        finally:
            await core.close_pools()

    assert run(receive()) == [{"type": "a", "n": 1}, {"type": "a", "n": 2}]


def test_send_now_gives_up_at_once_on_a_redis_that_is_away() -> None:
    import redis.exceptions

    layer = RedisChannelLayer([{"address": "redis://127.0.0.1:1/0", "socket_timeout": 30}])
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        layer.send_now("sisy.test", {"type": "a"})
    assert time.monotonic() - started < 5  # no retries with backoff, not the entry's 30 s


def test_send_now_uses_the_sentinel_form_of_a_host() -> None:
    from redis.sentinel import SentinelConnectionPool

    from sisy.layers import SEND_NOW_TIMEOUT, sync_pool

    pool = sync_pool(
        {
            "master_name": "mymaster",
            "sentinels": [("127.0.0.1", 26379)],
            "socket_timeout": 30,
            "sentinel_kwargs": {"socket_timeout": 30, "password": "s3cret"},
        }
    )
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.connection_kwargs["socket_timeout"] == SEND_NOW_TIMEOUT
    # The sentinels are asked with the same short timeouts and no retry.
    (sentinel,) = pool.sentinel_manager.sentinels
    options = sentinel.connection_pool.connection_kwargs
    assert options["socket_timeout"] == options["socket_connect_timeout"] == SEND_NOW_TIMEOUT
    assert options["password"] == "s3cret"
    assert sentinel.get_retry()._retries == 0


def test_send_now_keeps_its_timeouts_and_leaves_out_asyncio_objects() -> None:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff

    from sisy.layers import SEND_NOW_TIMEOUT, sync_pool

    pool = sync_pool(
        {
            "address": "redis://127.0.0.1:1/3?socket_timeout=30&socket_connect_timeout=30",
            "retry": AsyncRetry(NoBackoff(), 3),  # made for redis.asyncio: no use here
            "health_check_interval": 7,
        }
    )
    options = pool.connection_kwargs
    assert options["socket_timeout"] == options["socket_connect_timeout"] == SEND_NOW_TIMEOUT
    assert options["db"] == 3 and options["health_check_interval"] == 7
    assert "retry" not in options


def test_receive_hint_pops_with_one_command_and_keeps_no_backup(redis, redis_url: str) -> None:
    async def go() -> list[Any]:
        ours, core = RedisChannelLayer(hosts(redis_url)), CoreLayer(hosts(redis_url))
        try:
            await ours.send("sisy.test", {"type": "a", "n": 0})
            await ours.receive_hint("sisy.test")  # the first also looks at the backup queue
            await ours.send("sisy.test", {"type": "a", "n": 1})
            await core.send("sisy.test", {"type": "b", "n": 2})
            redis.config_resetstat()
            received = [await ours.receive_hint("sisy.test"), await ours.receive_hint("sisy.test")]
            calls = {name: v["calls"] for name, v in redis.info("commandstats").items()}
            # channels-redis's receive would also run its backup script (EVAL),
            # copy each message to the backup queue (ZADD) and drop it (ZPOPMIN).
            assert calls.get("cmdstat_bzpopmin") == 2, calls
            others = {"cmdstat_eval", "cmdstat_evalsha", "cmdstat_zadd", "cmdstat_zpopmin"}
            assert not others & set(calls), calls
            return received
        finally:
            await _closing(ours, core)

    assert run(go()) == [{"type": "a", "n": 1}, {"type": "b", "n": 2}]
    assert not redis.exists(KEY) and not redis.exists(KEY + "$inflight")


def test_receive_hint_waits_for_a_message_and_leaves_process_local_channels_to_receive(
    redis_url: str,
) -> None:
    async def go() -> list[Any]:
        layer = RedisChannelLayer(hosts(redis_url))
        try:
            waiting = asyncio.ensure_future(layer.receive_hint("sisy.test"))
            await asyncio.sleep(0.1)
            assert not waiting.done()
            await layer.send("sisy.test", {"type": "late"})
            local = await layer.new_channel()
            await layer.send(local, {"type": "reply"})
            return [await asyncio.wait_for(waiting, 5), await layer.receive_hint(local)]
        finally:
            await layer.close_pools()

    assert run(go()) == [{"type": "late"}, {"type": "reply"}]


def test_receive_hint_first_moves_back_what_channels_redis_left_in_its_backup(
    redis, redis_url: str
) -> None:
    async def go() -> list[Any]:
        ours, core = RedisChannelLayer(hosts(redis_url)), CoreLayer(hosts(redis_url))
        try:
            # What a channels-redis receive leaves when cancelled mid-way: the
            # popped message in the channel's backup queue, not on the channel.
            redis.zadd(KEY + "$inflight", {core.serialize({"type": "held"}): time.time() - 1})
            await ours.send("sisy.test", {"type": "new"})
            return [await ours.receive_hint("sisy.test"), await ours.receive_hint("sisy.test")]
        finally:
            await _closing(ours, core)

    assert run(go()) == [{"type": "held"}, {"type": "new"}]  # in score order
    assert not redis.exists(KEY + "$inflight")


def test_receive_hint_now_pops_any_of_several_channels_in_one_command(
    redis, redis_url: str
) -> None:
    layer, core = RedisChannelLayer(hosts(redis_url)), CoreLayer(hosts(redis_url))
    try:
        assert layer.receive_hint_now(["sisy.test", "sisy.other"], 1) is None  # waited, nothing
        layer.send_now("sisy.other", {"type": "a", "n": 1})
        run(core.send("sisy.test", {"type": "b", "n": 2}))
        redis.config_resetstat()
        received = [
            layer.receive_hint_now(["sisy.test", "sisy.other"], 1),
            layer.receive_hint_now(["sisy.test", "sisy.other"], 1),
        ]
        calls = {name: v["calls"] for name, v in redis.info("commandstats").items()}
        assert calls.get("cmdstat_bzpopmin") == 2, calls
        assert not {"cmdstat_eval", "cmdstat_zadd", "cmdstat_zpopmin"} & set(calls), calls
    finally:
        run(_closing(layer, core))
    # The first key named that holds a message is popped first.
    assert received == [("sisy.test", {"type": "b", "n": 2}), ("sisy.other", {"type": "a", "n": 1})]
    assert not redis.exists(KEY + "$inflight")


def test_receive_hint_now_first_moves_back_the_backup_and_drops_the_channel_key(
    redis, redis_url: str
) -> None:
    layer = RedisChannelLayer(hosts(redis_url))
    redis.zadd(KEY + "$inflight", {layer.serialize({"type": "held"}): time.time() - 1})
    run(layer.group_add("g", "sisy.test"))
    run(layer.group_send("g", {"type": "grouped"}))  # carries __asgi_channel__ in Redis
    try:
        received = [layer.receive_hint_now(["sisy.test"], 1) for _ in range(2)]
    finally:
        run(layer.group_discard("g", "sisy.test"))
        run(_closing(layer))
    assert received == [("sisy.test", {"type": "held"}), ("sisy.test", {"type": "grouped"})]
    assert not redis.exists(KEY + "$inflight")
    with pytest.raises(AssertionError, match="process-local"):
        layer.receive_hint_now(["sisy.test!abc"], 1)


@pytest.mark.parametrize(
    "host",
    [
        {"address": "redis://127.0.0.1:1/0", "socket_timeout": 3, "retry_on_timeout": True},
        {"address": "redis://127.0.0.1:1/0?retry_on_timeout=true&socket_timeout=3"},
    ],
    ids=["option", "query string"],
)
def test_receive_hint_now_reads_with_a_timeout_longer_than_its_pop_and_never_retries(
    host: dict[str, Any],
) -> None:
    layer = RedisChannelLayer([host])
    pool = layer._blocking_client(0, 1).connection_pool
    options = pool.connection_kwargs
    assert options["socket_timeout"] == 1 + POP_READ_MARGIN  # never cut a pop short
    assert options["socket_connect_timeout"] == SEND_NOW_TIMEOUT
    # A retried pop could lose what the first one took; a retried send would hold the caller.
    assert pool.make_connection().retry.get_retries() == 0
    assert layer._sync_client(0).connection_pool.make_connection().retry.get_retries() == 0
    with pytest.raises(redis_lib.exceptions.ConnectionError):  # away: raises at once
        layer.receive_hint_now(["sisy.test"], 1)


def test_close_pools_leaves_a_pop_under_way_alone(redis, redis_url: str) -> None:
    import threading

    layer = RedisChannelLayer(hosts(redis_url))
    got: list[Any] = []
    popping = threading.Thread(target=lambda: got.append(layer.receive_hint_now(["sisy.test"], 2)))
    popping.start()
    deadline = time.monotonic() + 5
    while not any(c["cmd"] == "bzpopmin" for c in redis.client_list()):
        assert time.monotonic() < deadline, "the pop never started"
        time.sleep(0.01)
    layer.send_now("sisy.test", {"type": "a"})  # a send_now pool too, idle by now
    run(layer.close_pools())
    popping.join(5)
    assert got == [("sisy.test", {"type": "a"})]  # not cut off by the close
    assert layer._sync_clients == {} and layer._blocking_clients == {}
