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


def test_the_run_thread_takes_the_run_channels_when_it_can_hand_each_their_messages(
    redis_url: str,
) -> None:
    import functools

    from channels.consumer import AsyncConsumer
    from channels.layers import InMemoryChannelLayer
    from channels.middleware import BaseMiddleware
    from channels.routing import ChannelNameRouter

    import sisy.routing
    from sisy.consumers import RunConsumer
    from sisy.state import WorkerState
    from sisy.worker import SisyWorker

    class Mine(AsyncConsumer):
        pass

    class Emails(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            pass

    class WithLayer(RunConsumer):
        channel_layer_alias = "default"

    def consumers(routes: dict[str, Any], layer: Any = None) -> dict[str, Any]:
        channels = list(routes)
        state = WorkerState(worker_id="w", channels=tuple(channels))
        layer = layer or RedisChannelLayer(hosts(redis_url))
        return SisyWorker(ChannelNameRouter(routes), channels, layer, state).run_thread_consumers()

    routes = {
        **sisy.routing.channel_routes(),
        "sisy.emails": Emails.as_asgi(),
        "mine": Mine.as_asgi(),
    }
    found = consumers(routes)
    assert {name: type(c) for name, c in found.items()} == {
        "sisy.run": RunConsumer,
        "sisy.emails": Emails,
    }
    assert found["sisy.emails"].scope == {"type": "channel", "channel": "sisy.emails"}
    with pytest.raises(NotImplementedError):
        found["sisy.run"].send({"type": "x"})
    # All or none: a run channel that needs Channels' set-up keeps every job on asgiref's thread.
    assert consumers({**routes, "sisy.grouped": WithLayer.as_asgi()}) == {}
    # So does a channel whose consumer sisy cannot see (it might run jobs).
    assert consumers({**routes, "wrapped": BaseMiddleware(RunConsumer.as_asgi())}) == {}
    inner = RunConsumer.as_asgi()

    @functools.wraps(inner)  # copies consumer_class onto the middleware
    async def logged(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)

    assert consumers({**routes, "logged": logged}) == {}
    assert consumers(routes, InMemoryChannelLayer()) == {}  # the layer cannot pop synchronously


def _popping_worker(redis_url: str, consumer_class: Any, channels: tuple[str, ...]) -> Any:
    """A worker, its layer and one ``consumer_class`` per channel, for calling pop_and_run."""
    from sisy.state import WorkerState
    from sisy.worker import SisyWorker

    layer = RedisChannelLayer(hosts(redis_url))
    state = WorkerState(worker_id="w", channels=channels)
    worker = SisyWorker(lambda *a: None, list(channels), layer, state)
    consumers = {name: consumer_class() for name in channels}
    for name, consumer in consumers.items():
        consumer.scope = {"type": "channel", "channel": name}
    return worker, layer, consumers


def test_the_run_thread_hands_over_what_it_pops_and_survives_what_fails(
    redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import threading
    import time

    from sisy.consumers import RunConsumer

    seen: list[Any] = []

    class Recording(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            seen.append(("run", message.get("job")))

        def test_note(self, message: dict[str, Any]) -> None:
            seen.append(("note", message["n"]))

        def test_fail(self, message: dict[str, Any]) -> None:
            raise RuntimeError("the database is away")

    worker, layer, consumers = _popping_worker(redis_url, Recording, ("sisy.t1", "sisy.t2"))
    state = worker.state
    layer.send_now("sisy.t1", {"type": "test.note", "n": 1})
    layer.send_now("sisy.t1", {"type": "test.fail"})
    redis.zadd("asgisisy.t2", {b"0123456789ab\xc1": time.time()})  # not a message
    layer.send_now("sisy.t2", {"type": "test.note", "n": 2})
    thread = threading.Thread(target=worker.pop_and_run, args=(consumers,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        state.stopping.set()
        thread.join(5)
    assert not thread.is_alive()  # stopped within one pop's wait
    # First each channel's backlog, as a worker starts; then what Redis held, in order.
    assert seen == [("run", None), ("run", None), ("note", 1), ("note", 2)]
    assert state.messages_dropped == 1
    assert "handling a message on sisy.t1 failed" in caplog.text
    assert "RuntimeError: the database is away" in caplog.text


def test_a_wake_up_popped_as_the_worker_stops_goes_back_to_redis(
    redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sisy.consumers import RunConsumer

    seen: list[Any] = []

    class Recording(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            seen.append(message.get("job"))

    worker, layer, consumers = _popping_worker(redis_url, Recording, ("sisy.t1",))
    state = worker.state
    layer.send_now("sisy.t1", {"type": "sisy.run", "job": "j1"})
    pop = RedisChannelLayer.receive_hint_now

    def pop_while_stopping(self: Any, channels: Any, timeout: int) -> Any:
        state.stopping.set()  # SIGTERM arrives while the pop waits
        return pop(self, channels, timeout)

    monkeypatch.setattr(RedisChannelLayer, "receive_hint_now", pop_while_stopping)
    worker.pop_and_run(consumers)
    assert seen == [None]  # the backlog only
    back = redis.zrange("asgisisy.t1", 0, -1)
    assert [layer.deserialize(data) for data in back] == [{"type": "sisy.run", "job": "j1"}]


@pytest.fixture
def keep_signal_handlers() -> Any:
    """SisyWorker.handle() installs SIGTERM/SIGINT handlers on its loop: put pytest's back."""
    import signal

    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def _run_only_worker(redis_url: str, consumer_class: Any) -> Any:
    from channels.routing import ChannelNameRouter

    from sisy.state import WorkerState
    from sisy.worker import SisyWorker

    layer = RedisChannelLayer(hosts(redis_url))
    state = WorkerState(worker_id="w", channels=("sisy.t1",))
    # The run channel only: no listener on the event loop at all.
    app = ChannelNameRouter({"sisy.t1": consumer_class.as_asgi()})
    return SisyWorker(app, ["sisy.t1"], layer, state)


def test_a_worker_whose_run_thread_fails_stops_with_status_1(
    redis_url: str, keep_signal_handlers: Any
) -> None:
    import asyncio

    from sisy.consumers import RunConsumer

    class Exiting(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            raise SystemExit(3)  # not an Exception: the thread cannot go on

    worker = _run_only_worker(redis_url, Exiting)
    asyncio.run(asyncio.wait_for(worker.handle(), 10))  # returns: the worker stopped
    assert worker.state.stopping.is_set()
    assert worker.exit_status == 1
    assert worker._signals == 0  # a stop of its own, not a signal (a second would exit at once)


def test_a_stopping_worker_waits_for_the_run_thread_to_end_its_pop(
    redis_url: str, keep_signal_handlers: Any
) -> None:
    import asyncio
    import threading

    from sisy.consumers import RunConsumer

    class Idle(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            pass

    worker = _run_only_worker(redis_url, Idle)

    async def go() -> None:
        asyncio.get_running_loop().call_later(0.3, worker.request_stop)
        await worker.handle()

    asyncio.run(asyncio.wait_for(go(), 10))
    # The thread was waiting in a one-second pop at the stop; handle() waited for it.
    assert not [t for t in threading.enumerate() if t.name == "sisy-run"]
    assert worker.exit_status == 0


def test_the_run_thread_backs_off_while_handling_fails_and_resets_on_success(
    redis_url: str,
) -> None:
    import threading

    from sisy.consumers import RunConsumer

    class Failing(RunConsumer):
        def sisy_run(self, message: dict[str, Any]) -> None:
            if message.get("job") != "fine":
                raise RuntimeError("the database is away")

    waits: list[float] = []

    class Stopping(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(round(timeout or 0, 3))
            if len(waits) == 5:
                self.set()
            return self.is_set()

    worker, layer, consumers = _popping_worker(redis_url, Failing, ("sisy.t1",))
    worker.state.stopping = Stopping()
    for job in ("a", "b", "fine", "c", "d", "e"):
        layer.send_now("sisy.t1", {"type": "sisy.run", "job": job})
    worker.pop_and_run(consumers)
    # The backlog fails, then a and b; "fine" resets the wait; then c and d.
    assert waits == [0.1, 0.2, 0.4, 0.1, 0.2]


def test_a_send_that_returns_a_coroutine_is_called_without_a_warning() -> None:
    """Channels' worker (runworker) gives consumers a lambda as ``send``: no asgiref warning."""
    import warnings

    from asgiref.sync import async_to_sync

    from sisy.consumers import _marked_async

    sent: list[Any] = []

    async def deliver(message: Any) -> None:
        sent.append(message)

    def send(message: Any) -> Any:
        return deliver(message)

    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="async_to_sync was passed a non-async-marked")
        async_to_sync(send)({"n": 1})  # as it was: asgiref warns
        assert [str(w.message) for w in caught if "non-async-marked" in str(w.message)]
        caught.clear()
        async_to_sync(_marked_async(send))({"n": 2})
        assert not [w for w in caught if "non-async-marked" in str(w.message)]
    assert sent == [{"n": 1}, {"n": 2}]
    assert _marked_async(deliver) is deliver


def test_the_run_consumer_gives_asgiref_a_coroutine_function_as_send() -> None:
    """As Channels' worker (runworker) calls it: a lambda as ``send``, no warning."""
    import asyncio
    import warnings

    from channels.exceptions import StopConsumer

    from sisy.consumers import RunConsumer

    async def receive() -> Any:
        raise StopConsumer

    async def deliver(message: Any) -> None:
        pass

    application = RunConsumer.as_asgi()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="async_to_sync was passed a non-async-marked")
        asyncio.run(application({"type": "channel"}, receive, lambda m: deliver(m)))
    assert not [w for w in caught if "non-async-marked" in str(w.message)]
