"""submit(): the row first, the wake-up after commit, and a failed send never reaches the caller."""

from __future__ import annotations

import json
import logging
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import sisy
from sisy import dispatch
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus
from tests.conftest import zcard

pytestmark = pytest.mark.django_db(transaction=True)

WAKEUP_KEY = "asgisisy.run"


def wakeups(redis) -> list[dict]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    zcard(redis, WAKEUP_KEY)  # lets the sends land first
    return [layer.deserialize(raw) for raw in redis.zrange(WAKEUP_KEY, 0, -1)]


def test_submit_stores_the_job_and_its_ordered_tasks(redis) -> None:
    job = sisy.submit(
        {"job_title": "Two", "tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0}}]}
    )
    stored = Job.objects.get(pk=job.job_id)
    assert stored.job_title == "Two"
    assert stored.status == JobStatus.QUEUED
    assert stored.attempts == 0
    assert stored.worker == ""
    assert stored.channel == "sisy.run"
    assert stored.max_attempts == 3
    assert stored.created_at is not None and stored.started_at is None
    tasks = stored.ordered_tasks()
    assert [(t.position, t.module, t.data, t.status) for t in tasks] == [
        (0, "record", {"label": "a"}, JobTaskStatus.PENDING),
        (1, "slow", {"seconds": 0}, JobTaskStatus.PENDING),
    ]


def test_wakeup_is_sent_after_commit_and_names_only_the_job(redis) -> None:
    with transaction.atomic():
        job = sisy.submit({"record": {"label": "a"}})
        assert wakeups(redis) == []  # not before the commit
    assert [{k: v for k, v in m.items() if not k.startswith("__")} for m in wakeups(redis)] == [
        {"type": "sisy.run", "job": str(job.job_id)}
    ]


def test_rolled_back_submit_sends_nothing(redis) -> None:
    def failing_request() -> None:
        with transaction.atomic():
            sisy.submit({"record": {"label": "a"}})
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        failing_request()
    assert Job.objects.count() == 0
    assert wakeups(redis) == []


def test_invalid_spec_stores_nothing() -> None:
    with pytest.raises(JobSpecError):
        sisy.submit({"tasks": [{"record": {"label": "a"}}, {"record": {}}]})
    assert Job.objects.count() == 0
    assert JobTask.objects.count() == 0


def test_duplicate_job_id_is_a_spec_error_and_keeps_the_first() -> None:
    job_id = "6f1c2a9e-2f55-4a4a-8a0e-5b7d6b1d9c01"
    sisy.submit({"job_id": job_id, "job_title": "first", "record": {"label": "a"}})
    with pytest.raises(JobSpecError) as info:
        sisy.submit({"job_id": job_id, "job_title": "second", "record": {"label": "b"}})
    assert info.value.as_details()[0]["path"] == "$.job_id"
    assert Job.objects.get().job_title == "first"
    assert JobTask.objects.get().data == {"label": "a"}


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_timeout": 1}]},
        }
    }
)
def test_unreachable_redis_never_fails_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sisy.dispatch"):
        job = sisy.submit({"record": {"label": "a"}})
        assert time.monotonic() - started < 1  # the caller does not wait for Redis
        assert Job.objects.get(pk=job.job_id).status == JobStatus.QUEUED
        assert dispatch.flush()
    assert "the sweep will send it again" in caplog.text


def test_full_channel_is_not_an_error(redis) -> None:
    # channels-redis refuses sends past its capacity (100): more jobs are still stored.
    # (Its check and its write are two steps, so sends in flight together may overshoot.)
    jobs = [sisy.submit({"record": {"label": str(i)}}) for i in range(300)]
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == len(jobs)
    assert 100 <= zcard(redis, WAKEUP_KEY) < 300


def test_a_full_channel_is_left_alone_for_a_while(redis, monkeypatch) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    sends: list[str] = []
    original, original_now = type(layer).send, type(layer).send_now

    async def counting_send(self, channel: str, message: dict) -> None:
        sends.append(channel)
        await original(self, channel, message)

    def counting_send_now(self, channel: str, message: dict) -> None:
        sends.append(channel)
        original_now(self, channel, message)

    monkeypatch.setattr(type(layer), "send", counting_send)
    monkeypatch.setattr(type(layer), "send_now", counting_send_now)
    monkeypatch.setattr(dispatch, "CHANNEL_FULL_PAUSE", 60.0)  # however slow this machine
    for i in range(300):
        sisy.submit({"record": {"label": str(i)}})
        if i == 150:
            assert dispatch.flush()
            tried = len(sends)
    assert dispatch.flush()
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 300
    assert 100 <= zcard(redis, WAKEUP_KEY) < 150
    assert len(sends) == tried  # no send tried after the channel was found full
    dispatch._sender.forget_full_channels()
    sisy.submit({"record": {"label": "after the pause"}})
    assert dispatch.flush() and len(sends) == tried + 1


def test_canonical_spec_round_trips_through_json() -> None:
    job = sisy.submit(
        json.dumps({"job_name": "text", "tasks": [{"module": "record", "data": {"label": "a"}}]})
    )
    assert job.job_title == "text"


def test_submit_many_stores_every_job_in_one_go_and_sends_a_few_wakeups(redis) -> None:
    specs = [{"job_title": f"bulk {i}", "record": {"label": str(i)}} for i in range(50)]
    specs.append({"tasks": [{"record": {"label": "x"}}, {"slow": {"seconds": 0}}]})
    with CaptureQueriesContext(connection) as queries:
        jobs = sisy.submit_many(specs)
    assert len(jobs) == 51 and Job.objects.count() == 51
    assert [t.module for t in Job.objects.get(pk=jobs[-1].pk).ordered_tasks()] == ["record", "slow"]
    inserts = [q for q in queries if q["sql"].upper().startswith("INSERT")]
    assert len(inserts) == 2  # one for the jobs, one for their tasks
    assert zcard(redis, WAKEUP_KEY) == 10  # SISY_SWEEP_MAX_WAKEUPS: each woken worker drains


def test_submit_many_stores_nothing_if_one_spec_is_bad(redis) -> None:
    with pytest.raises(JobSpecError) as caught:
        sisy.submit_many([{"record": {"label": "ok"}}, {"record": {"label": 5}}, {"nope": {}}])
    messages = [p.message for p in caught.value.problems]
    assert messages[0].startswith("job 1: ") and messages[-1].startswith("job 2: ")
    assert not Job.objects.exists()
    taken = sisy.submit({"record": {"label": "first"}}).job_id
    with pytest.raises(JobSpecError, match="already exists"):
        sisy.submit_many(
            [{"record": {"label": "a"}}, {"job_id": str(taken), "record": {"label": "b"}}]
        )
    assert Job.objects.count() == 1
    with transaction.atomic():  # the caller's transaction stays usable
        with pytest.raises(JobSpecError, match=f"a job with id {taken} already exists"):
            sisy.submit_many([{"job_id": str(taken), "record": {"label": "c"}}])
        sisy.submit_many([{"record": {"label": "d"}}])
    assert Job.objects.count() == 2


def test_a_taken_job_id_inside_a_transaction_leaves_it_usable() -> None:
    first = sisy.submit({"job_title": "first", "record": {"label": "a"}})
    with transaction.atomic():
        with pytest.raises(JobSpecError, match="already exists"):
            sisy.submit({"job_id": str(first.job_id), "record": {"label": "b"}})
        second = sisy.submit({"job_title": "second", "record": {"label": "c"}})
    assert Job.objects.filter(pk__in=[first.pk, second.pk]).count() == 2


def test_a_job_with_many_tasks_is_stored_whole() -> None:
    job = sisy.submit({"tasks": [{"record": {"label": str(n)}} for n in range(120)]})
    assert [t.data["label"] for t in job.ordered_tasks()] == [str(n) for n in range(120)]


def test_one_wakeup_reaches_redis_before_submit_returns(redis, monkeypatch) -> None:
    # No hand-over to the sender thread: the message is in Redis when submit returns.
    monkeypatch.setattr(dispatch._sender, "post", _no_post)
    job = sisy.submit({"record": {"label": "direct"}})
    assert redis.zcard(WAKEUP_KEY) == 1
    assert wakeups(redis) == [dispatch.run_message(job.job_id)]


def _no_post(*args: object) -> bool:
    raise AssertionError("the wake-up went to the sender thread")


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "sisy.layers.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},  # nothing listens there
        }
    }
)
def test_after_a_failed_direct_send_callers_hand_over_for_a_while(
    caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    from sisy.layers import RedisChannelLayer

    tried: list[str] = []
    original_now = RedisChannelLayer.send_now

    def counting_send_now(self, channel: str, message: dict) -> None:
        tried.append(channel)
        original_now(self, channel, message)

    monkeypatch.setattr(RedisChannelLayer, "send_now", counting_send_now)
    try:
        with caplog.at_level(logging.WARNING, logger="sisy.dispatch"):
            jobs = [sisy.submit({"record": {"label": str(n)}}) for n in range(3)]
            assert dispatch.flush()
        assert tried == ["sisy.run"]  # then the sender thread's, which fail too
        assert "sending from sisy's thread for 5s" in caplog.text
        assert "the sweep will send it again" in caplog.text
        queued = Job.objects.filter(pk__in=[job.pk for job in jobs], status=JobStatus.QUEUED)
        assert queued.count() == 3
    finally:
        dispatch._sender.forget_full_channels()


@pytest.mark.skipif(
    connection.vendor == "postgresql", reason="one statement there, atomic by itself"
)
def test_a_failed_task_insert_takes_the_job_row_with_it(monkeypatch) -> None:
    # Outside a transaction the job and its tasks are still one unit: the job's
    # row is rolled back when its tasks cannot be stored, and the connection
    # is left as it was (autocommit, no transaction open).
    from sisy import sql

    original = sql.insert

    def failing_insert(model, objs, using=None):
        if model is JobTask:
            raise RuntimeError("the disk is full")
        original(model, objs, using)

    monkeypatch.setattr(sql, "insert", failing_insert)
    with pytest.raises(RuntimeError):
        sisy.submit({"record": {"label": "lost"}})
    monkeypatch.undo()
    assert not Job.objects.exists()
    assert connection.get_autocommit() and not connection.in_atomic_block
    job = sisy.submit({"record": {"label": "kept"}})
    assert Job.objects.get().pk == job.pk


def test_a_layer_without_send_now_gets_its_wakeups_from_the_sender_thread(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # channels-redis's pub/sub layer answers any attribute through an event
    # loop, which the submitting thread has none of.
    layers = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    with override_settings(CHANNEL_LAYERS=layers), caplog.at_level(logging.WARNING):
        job = sisy.submit({"record": {"label": "pubsub"}})
        assert dispatch.flush()
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
    assert "could not send" not in caplog.text


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own transaction handling")
def test_a_failed_commit_leaves_no_transaction_open(monkeypatch) -> None:
    # As when a reader holds the file in rollback-journal mode: COMMIT fails
    # with "database is locked" and SQLite keeps the transaction open.
    from django.db import OperationalError
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    original = SQLiteCursorWrapper.execute
    failures = []

    def locked_commit(self, query, params=None):
        if query == "COMMIT" and not failures:
            failures.append(query)
            raise OperationalError("database is locked")
        return original(self, query, params)

    monkeypatch.setattr(SQLiteCursorWrapper, "execute", locked_commit)
    with pytest.raises(OperationalError):
        sisy.submit({"record": {"label": "lost"}})
    assert failures and not connection.connection.in_transaction
    assert not Job.objects.exists()
    job = sisy.submit({"record": {"label": "kept"}})
    assert list(Job.objects.values_list("pk", flat=True)) == [job.pk]


def test_an_error_that_is_not_redis_away_does_not_pause_direct_sends(redis, monkeypatch) -> None:
    from sisy.layers import RedisChannelLayer

    original = RedisChannelLayer.send_now

    def refusing(self, channel: str, message: dict) -> None:
        if message["job"] == refused:
            raise TypeError("the layer refuses this")
        original(self, channel, message)

    monkeypatch.setattr(RedisChannelLayer, "send_now", refusing)
    refused = str(sisy.submit({"record": {"label": "refused"}}).job_id)
    assert dispatch.flush()  # the sender thread tried it too, and said why
    assert dispatch._sender.direct_paused_until == 0.0  # Redis was never the problem
    sisy.submit({"record": {"label": "sent"}})
    assert redis.zcard(WAKEUP_KEY) == 2  # at once: sent directly


@pytest.mark.parametrize("channel", ["no spaces", "", "x" * 100, "local!name", 7])
def test_a_channel_name_the_layer_would_refuse_is_a_value_error(channel: object) -> None:
    with pytest.raises(ValueError, match="channel must be a channel name"):
        sisy.submit({"record": {"label": "a"}}, channel=channel)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel must be a channel name"):
        sisy.submit_many([{"record": {"label": "a"}}], channel=channel)  # type: ignore[arg-type]
    assert not Job.objects.exists()
