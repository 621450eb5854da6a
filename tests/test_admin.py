"""The admin through Django's test client: pages, permissions, actions, query counts."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

import sisy
from sisy import runner
from sisy.models import Job, JobStatus, JobTaskStatus, Task, task_with_callable
from sisy.state import WorkerState
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    return client


def test_job_list_shows_progress_with_a_fixed_number_of_queries(staff: Client) -> None:
    for i in range(3):
        sisy.submit(
            {
                "job_title": f"job {i}",
                "tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0}}],
            }
        )
    url = reverse("admin:sisy_job_changelist")
    with CaptureQueriesContext(connection) as few:
        assert staff.get(url).status_code == 200
    for i in range(3, 12):
        sisy.submit({"job_title": f"job {i}", "record": {"label": "a"}})
    with CaptureQueriesContext(connection) as many:
        response = staff.get(url)
    assert response.status_code == 200
    assert len(many) == len(few)  # no query per row
    assert b"<progress" in response.content and b"job 11" in response.content


def test_job_detail_is_read_only_with_formatted_traceback(staff: Client) -> None:
    job = sisy.submit(
        {"job_title": "<b>bold</b>", "fail": {"message": "<script>alert(1)</script>"}}
    )
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    response = staff.get(reverse("admin:sisy_job_change", args=[job.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in content  # escaped
    assert "<script>alert(1)" not in content
    assert 'name="job_title"' not in content  # no editable field


def test_add_job_validates_like_submit_and_stores_nothing_when_invalid(staff: Client) -> None:
    url = reverse("admin:sisy_job_add")
    page = staff.get(url)
    assert page.status_code == 200 and b"Registered modules" in page.content
    assert b"sisy.task" not in page.content  # internal modules are not offered
    bad = staff.post(url, {"spec": json.dumps({"tasks": [{"record": {"label": 7}}]})})
    assert bad.status_code == 200
    assert "task 0, $.label: 7 is not of type &#x27;string&#x27;" in bad.content.decode()
    assert Job.objects.count() == 0
    good = staff.post(
        url, {"spec": json.dumps({"job_title": "from admin", "record": {"label": "a"}})}
    )
    assert good.status_code == 302
    job = Job.objects.get()
    assert job.job_title == "from admin" and job.status == JobStatus.QUEUED


def test_cancel_and_retry_actions(staff: Client) -> None:
    queued = sisy.submit({"job_title": "q", "record": {"label": "a"}})
    url = reverse("admin:sisy_job_changelist")
    staff.post(url, {"action": "cancel_jobs", "_selected_action": [str(queued.pk)]})
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    failed = sisy.submit({"job_title": "f", "tasks": [{"record": {"label": "ok"}}, {"fail": {}}]})
    runner.handle_wakeup(str(failed.job_id), WorkerState(worker_id="w"), "sisy.run")
    failed.refresh_from_db()
    assert failed.status == JobStatus.FAILED
    staff.post(url, {"action": "retry_jobs", "_selected_action": [str(failed.pk)]})
    failed.refresh_from_db()
    assert failed.status == JobStatus.QUEUED and failed.error == ""
    assert [t.status for t in failed.ordered_tasks()] == [
        JobTaskStatus.SUCCEEDED,
        JobTaskStatus.PENDING,
    ]
    runner.handle_wakeup(str(failed.job_id), WorkerState(worker_id="w"), "sisy.run")
    failed.refresh_from_db()
    assert failed.attempts == 2 and failed.status == JobStatus.FAILED


def test_actions_need_post_and_permission() -> None:
    job = sisy.submit({"record": {"label": "a"}})
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    client = Client()
    client.force_login(viewer)
    url = reverse("admin:sisy_job_changelist")
    page = client.get(url)
    assert page.status_code == 200
    assert b"cancel_jobs" not in page.content  # not offered without change permission
    response = client.post(url, {"action": "cancel_jobs", "_selected_action": [str(job.pk)]})
    assert response.status_code == 200  # an action it may not run is ignored
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED  # no change permission: nothing cancelled
    assert client.get(reverse("admin:sisy_job_add")).status_code == 403
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.get(url).status_code == 302  # to the login page


def test_csrf_is_enforced_on_actions() -> None:
    job = sisy.submit({"record": {"label": "a"}})
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("admin2", "b@example.com", "pw"))
    response = client.post(
        reverse("admin:sisy_job_changelist"),
        {"action": "cancel_jobs", "_selected_action": [str(job.pk)]},
    )
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


def test_task_admin_lists_outcomes_and_next_runs_and_runs_now(staff: Client) -> None:
    Task.objects.all().delete()
    for i in range(3):
        task_with_callable(tasks.record_run, label=f"t{i}", schedule="*/5 * * * *").save()
    url = reverse("admin:sisy_task_changelist")
    with CaptureQueriesContext(connection) as few:
        assert staff.get(url).status_code == 200
    for i in range(3, 10):
        task_with_callable(tasks.record_run, label=f"t{i}", schedule="*/5 * * * *").save()
    with CaptureQueriesContext(connection) as many:
        listing = staff.get(url)
    assert listing.status_code == 200
    assert len(many) == len(few)
    assert "Every 5 minutes" in listing.content.decode()
    task = Task.objects.get(label="t0")
    detail = staff.get(reverse("admin:sisy_task_change", args=[task.pk]))
    assert detail.status_code == 200 and detail.content.decode().count("<div>20") >= 5
    staff.post(url, {"action": "run_now", "_selected_action": [str(task.pk)]})
    job = Job.objects.get(task=task)
    runner.handle_wakeup(str(job.job_id), WorkerState(worker_id="w"), "sisy.run")
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert "succeeded" in staff.get(url).content.decode()
    staff.post(url, {"action": "disable", "_selected_action": [str(task.pk)]})
    task.refresh_from_db()
    assert not task.enabled and task.next_run is None
    staff.post(url, {"action": "enable", "_selected_action": [str(task.pk)]})
    task.refresh_from_db()
    assert task.enabled and task.next_run is not None


def test_search_by_title_or_exact_job_id_never_fails(staff: Client) -> None:
    job = sisy.submit({"job_title": "findable", "record": {"label": "a"}})
    sisy.submit({"job_title": "other", "record": {"label": "b"}})
    url = reverse("admin:sisy_job_changelist")
    for term, count in [("findable", 1), (str(job.job_id), 1), ("not-a-uuid", 0), ("'%_", 0)]:
        response = staff.get(url, {"q": term})
        assert response.status_code == 200
        assert response.context["cl"].result_count == count, term


def test_workers_page_lists_live_workers_with_a_link_to_their_job(staff: Client, redis) -> None:
    from sisy import heartbeat

    job = sisy.submit({"job_title": "encoding <now>", "record": {"label": "a"}})
    busy = WorkerState(worker_id="page-1")
    busy.job_started(str(job.job_id), job.job_title, 1)
    busy.set_progress(0.4, "step 4")
    heartbeat.publish(redis, busy)
    heartbeat.publish(redis, WorkerState(worker_id="page-2"))
    response = staff.get(reverse("admin:sisy_workers"))
    assert response.status_code == 200
    content = response.content.decode()
    assert "page-1" in content and "page-2" in content and "2 live workers" in content
    assert reverse("admin:sisy_job_change", args=[job.pk]) in content
    assert "encoding &lt;now&gt;" in content and 'value="40"' in content
    assert 'http-equiv="refresh"' in content
    assert (
        reverse("admin:sisy_workers")
        in staff.get(reverse("admin:sisy_job_changelist")).content.decode()
    )


def test_workers_page_needs_permission() -> None:
    client = Client()
    client.force_login(User.objects.create_user("nobody", password="pw", is_staff=True))
    assert client.get(reverse("admin:sisy_workers")).status_code == 403
