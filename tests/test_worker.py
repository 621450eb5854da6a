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
    try:
        SisyWorker(lambda *a: None, ["sisy.run"], layer, WorkerState(worker_id="w")).run()
    finally:
        gc.unfreeze()
        faulthandler.unregister(signal.SIGUSR1)
    assert len(seen) == 1 and seen[0] > 1000, seen
