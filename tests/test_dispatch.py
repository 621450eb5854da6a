"""submit(): the row first, the wake-up after commit, and a failed send never reaches the caller."""

from __future__ import annotations

import json
import logging

import pytest
from django.db import transaction
from django.test import override_settings

import sisy
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobStatus, JobTask, JobTaskStatus

pytestmark = pytest.mark.django_db(transaction=True)

WAKEUP_KEY = "asgisisy.run"


def wakeups(redis) -> list[dict]:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
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
    with caplog.at_level(logging.WARNING, logger="sisy.dispatch"):
        job = sisy.submit({"record": {"label": "a"}})
    assert Job.objects.get(pk=job.job_id).status == JobStatus.QUEUED
    assert "the sweep will send it again" in caplog.text


def test_full_channel_is_not_an_error(redis) -> None:
    # channels-redis refuses sends past its capacity (100): more jobs are still stored.
    jobs = [sisy.submit({"record": {"label": str(i)}}) for i in range(120)]
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == len(jobs)
    assert redis.zcard(WAKEUP_KEY) == 100


def test_canonical_spec_round_trips_through_json() -> None:
    job = sisy.submit(
        json.dumps({"job_name": "text", "tasks": [{"module": "record", "data": {"label": "a"}}]})
    )
    assert job.job_title == "text"
