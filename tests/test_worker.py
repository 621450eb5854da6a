"""The worker process's set-up: how it receives on each channel, its collector."""

from __future__ import annotations

from typing import Any

import pytest

from sisy.layers import RedisChannelLayer


def hosts(redis_url: str) -> list[dict[str, Any]]:
    return [{"address": redis_url, "socket_timeout": 10}]


def test_a_worker_pops_with_receive_hint_only_on_channels_routed_to_sisy(redis_url: str) -> None:
    from channels.consumer import AsyncConsumer
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter

    import sisy.routing
    from sisy.consumers import RunConsumer
    from sisy.state import WorkerState
    from sisy.worker import SisyWorker

    class Mine(AsyncConsumer):
        pass

    routes = {
        **sisy.routing.channel_routes(),
        "sisy.emails": RunConsumer.as_asgi(),
        "mine": Mine.as_asgi(),
    }
    application = ProtocolTypeRouter({"channel": ChannelNameRouter(routes)})
    layer = RedisChannelLayer(hosts(redis_url))
    channels = list(routes)

    def worker(app: Any) -> SisyWorker:
        state = WorkerState(worker_id="w", channels=tuple(channels))
        return SisyWorker(app, channels, layer, state)

    expected = {*sisy.routing.channel_names(), "sisy.emails"}
    assert worker(application).hint_channels == expected
    assert worker(ChannelNameRouter(routes)).hint_channels == expected

    async def custom(scope: Any, receive: Any, send: Any) -> None:  # a router sisy cannot read
        pass

    assert worker(custom).hint_channels == set(sisy.routing.channel_names())


def test_a_worker_puts_what_start_up_made_out_of_the_collectors_sight(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faulthandler
    import gc
    import signal
    import weakref

    from channels.worker import Worker

    from sisy import state, worker
    from sisy.state import WorkerState
    from sisy.worker import SisyWorker

    seen: list[int] = []
    monkeypatch.setattr(Worker, "run", lambda self: seen.append(gc.get_freeze_count()))
    monkeypatch.setattr(worker, "start_heartbeat", lambda worker_state: None)
    monkeypatch.setattr(worker, "stop_heartbeat", lambda: None)
    monkeypatch.setattr(state, "_current", None)
    gc.unfreeze()
    layer = RedisChannelLayer(hosts(redis_url))

    class Node:
        pass

    enabled = gc.isenabled()
    gc.disable()  # the cycle below is garbage before run(), found by no collection yet
    try:
        node = Node()
        node.me = node  # type: ignore[attr-defined]
        garbage = weakref.ref(node)
        del node
        SisyWorker(lambda *a: None, ["sisy.run"], layer, WorkerState(worker_id="w")).run()
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
        faulthandler.unregister(signal.SIGUSR1)
    assert len(seen) == 1 and seen[0] > 1000, seen
    assert garbage() is None  # collected before the freeze, not kept forever


def test_a_run_consumer_dispatches_each_message_and_ends_cleanly_on_stop_consumer() -> None:
    import asyncio

    from asgiref.testing import ApplicationCommunicator
    from channels.exceptions import StopConsumer

    from sisy.consumers import RunConsumer

    seen: list[Any] = []

    class Recording(RunConsumer):
        def test_note(self, message: dict[str, Any]) -> None:
            seen.append(message["n"])

        def test_stop(self, message: dict[str, Any]) -> None:
            raise StopConsumer

    async def go() -> None:
        app = ApplicationCommunicator(Recording.as_asgi(), {"type": "channel", "channel": "x"})
        for n in range(3):
            await app.send_input({"type": "test.note", "n": n})
        await app.send_input({"type": "test.stop"})
        await app.wait(timeout=5)  # returns once the consumer has ended, raises otherwise

    asyncio.run(go())
    assert seen == [0, 1, 2]


def test_a_run_consumer_with_a_layer_of_its_own_keeps_channels_set_up(redis_url: str) -> None:
    import asyncio

    from asgiref.testing import ApplicationCommunicator

    from sisy.consumers import RunConsumer

    names: list[str] = []

    class WithLayer(RunConsumer):
        channel_layer_alias = "default"

        def test_name(self, message: dict[str, Any]) -> None:
            names.append(self.channel_name)

    async def go() -> None:
        app = ApplicationCommunicator(WithLayer.as_asgi(), {"type": "channel", "channel": "x"})
        await app.send_input({"type": "test.name"})
        for _ in range(100):
            if names:
                break
            await asyncio.sleep(0.05)
        assert not app.future.done()  # still listening on its own channel too
        await app.wait(timeout=0.1)  # cancels it

    asyncio.run(go())
    assert len(names) == 1 and "!" in names[0], names
