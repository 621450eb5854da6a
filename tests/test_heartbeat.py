"""Worker heartbeats in Redis: payload, TTL, removal, the reader."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from sisy import heartbeat
from sisy.heartbeat import HeartbeatThread, live_workers
from sisy.state import WorkerState
from tests.conftest import wait_for


def test_publish_writes_status_and_hostname_with_a_ttl(redis) -> None:
    state = WorkerState(worker_id="w-pub", channels=("sisy.run",))
    heartbeat.publish(redis, state)
    payload = json.loads(redis.get("worker:w-pub"))
    assert payload["status"] == "startup"
    assert payload["hostname"] == state.hostname
    assert payload["channels"] == ["sisy.run"]
    assert "job_id" not in payload
    assert 0 < redis.pttl("worker:w-pub") <= 3000  # SISY_WORKER_HEARTBEAT_TTL in tests


def test_job_fields_only_while_a_job_runs(redis) -> None:
    state = WorkerState(worker_id="w-job")
    state.job_started("1248a932-8d35-4c1e-9a6f-0f3c0e6b1a11", "awesome_job_1", 1)
    state.set_progress(0.25, "a quarter")
    heartbeat.publish(redis, state)
    payload = json.loads(redis.get("worker:w-job"))
    assert payload["status"] == "in_progress"
    assert payload["job_id"] == "1248a932-8d35-4c1e-9a6f-0f3c0e6b1a11"
    assert payload["job_title"] == "awesome_job_1"
    assert payload["progress"] == 0.25
    state.job_finished()
    heartbeat.publish(redis, state)
    payload = json.loads(redis.get("worker:w-job"))
    assert payload["status"] == "idle"
    assert "job_id" not in payload and "job_title" not in payload
    assert payload["jobs_done"] == 1


@override_settings(SISY_WORKER_KEY_PREFIX="sisy:worker:")
def test_reader_lists_live_workers_under_the_configured_prefix(redis) -> None:
    for name in ("b", "a"):
        heartbeat.publish(redis, WorkerState(worker_id=name))
    redis.set("sisy:worker:garbage", b"\xff not json")
    redis.set("worker:other-prefix", "{}")
    assert [w["worker_id"] for w in live_workers(redis)] == ["a", "b"]


def test_thread_publishes_at_once_on_a_status_change_and_removes_the_key(redis) -> None:
    state = WorkerState(worker_id="w-thread")
    beats: list[str] = []
    thread = HeartbeatThread(state, on_beat=lambda s: beats.append(s.status))
    thread.start()
    try:
        wait_for(lambda: redis.get("worker:w-thread"), 5, "first heartbeat")
        state.job_started("00000000-0000-0000-0000-000000000001", "t", 1)
        wait_for(
            lambda: json.loads(redis.get("worker:w-thread"))["status"] == "in_progress",
            5,
            "in_progress",
        )
        wait_for(lambda: beats, 5, "the beat callback (lease renewal)")
    finally:
        thread.stop()
    assert redis.get("worker:w-thread") is None


@override_settings(SISY_REDIS_URL="redis://127.0.0.1:1/0")
def test_unreachable_redis_does_not_stop_the_thread() -> None:
    state = WorkerState(worker_id="w-down")
    beats: list[int] = []
    thread = HeartbeatThread(state, on_beat=lambda s: beats.append(1))
    thread.start()
    try:
        wait_for(lambda: beats, 10, "a beat despite Redis being down")
        assert thread.is_alive()
    finally:
        thread.stop(timeout=10)


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["redis://h:1/2"], {"url": "redis://h:1/2"}),
        ([("h", 7000)], {"host": "h", "port": 7000}),
        (
            [{"address": "redis://h:1", "socket_timeout": 10}],
            {"url": "redis://h:1", "socket_timeout": 10},
        ),
        ([{"address": ("h", 7001), "password": "p"}], {"host": "h", "port": 7001, "password": "p"}),
        (
            [{"host": "h", "port": 7002, "socket_timeout": 10}],
            {"host": "h", "port": 7002, "socket_timeout": 10},
        ),
    ],
)
def test_redis_location_follows_the_channel_layer(hosts: list, expected: dict) -> None:
    layers = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": hosts}}
    }
    with override_settings(CHANNEL_LAYERS=layers):
        assert heartbeat.redis_connection_kwargs() == expected
    with override_settings(CHANNEL_LAYERS=layers, SISY_REDIS_URL="redis://elsewhere:6379/3"):
        assert heartbeat.redis_connection_kwargs() == {"url": "redis://elsewhere:6379/3"}
