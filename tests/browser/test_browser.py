"""What a person sees in a real browser: the admin's job form, its job list and live
workers page, and the demo's job page, with jobs run by a real worker process.

Each step waits on what the page shows, with a deadline; screenshots of every
step are saved under ``SISY_ARTIFACTS``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from tests.conftest import Workers, wait_for
from tests.testapp.sisy_modules import recorded

pytestmark = pytest.mark.browser

USERNAME = "browser-admin"
PASSWORD = "a-long-test-password-1"  # a throw-away test user
FINISHED = ("succeeded", "failed", "cancelled")
#: Seconds a job of the test modules may take, worker start included.
JOB_DEADLINE = 60


class Page:
    """The browser, the site's base URL and numbered screenshots."""

    def __init__(self, driver: Any, base: str, artifacts: Path, prefix: str) -> None:
        self.driver = driver
        self.base = base
        self.artifacts = artifacts
        self.prefix = prefix
        self.shots: list[Path] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url.removeprefix(self.base)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        found: list[Any] = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found

    def wait(self, condition: Any, what: str, timeout: float = 20) -> Any:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
        except TimeoutException:
            self.screenshot("timeout")
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{self.prefix}-{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    def log_in(self) -> None:
        """Fill in and send the admin's login form, on the page the browser is at."""
        assert self.path.startswith(reverse("admin:login")), self.path
        self.find("#id_username").send_keys(USERNAME)
        self.find("#id_password").send_keys(PASSWORD)
        self.screenshot("login")
        self.find("input[type=submit]").click()


@pytest.fixture
def admin_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser(USERNAME, "admin@example.com", PASSWORD)


def start_worker(workers: Workers) -> int:
    """A real ``sisy_worker`` process; returns its pid once its heartbeat says it is idle."""
    from sisy.heartbeat import live_workers

    process = workers.start()
    wait_for(
        lambda: any(
            w.get("pid") == process.pid and w.get("status") == "idle" for w in live_workers()
        ),
        timeout=30,
        what="the worker's first heartbeat",
    )
    return process.pid


def job_row(page: Page, job_id: Any) -> Any:
    """The admin job list's row of the job ``job_id``, or ``None``."""
    link = f"a[href='{reverse('admin:sisy_job_change', args=[job_id])}']"
    for row in page.find_all("#result_list tbody tr"):
        if row.find_elements("css selector", link):
            return row
    return None


@pytest.mark.e2e
def test_admin_and_job_page_run_jobs_on_a_real_worker(
    browser: Any, site: str, artifacts: Path, admin_user: Any, workers: Workers
) -> None:
    from sisy.models import Job

    page = Page(browser, site, artifacts, "e2e")
    worker_pid = start_worker(workers)

    # The job page asks for a login, on the admin's login page, and comes back.
    page.open("/demo/")
    page.wait(lambda d: page.path.startswith(reverse("admin:login")), "the login redirect")
    assert "next=/demo/" in page.path
    page.log_in()
    page.wait(lambda d: page.path == "/demo/", "the job page after logging in")

    # The admin's add form takes a JSON job specification.
    page.open(reverse("admin:sisy_job_add"))
    spec = {
        "job_title": "browser admin job",
        "tasks": [{"slow": {"seconds": 1.0}}, {"record": {"label": "from the admin"}}],
    }
    page.find("#id_spec").send_keys(json.dumps(spec))
    page.screenshot("admin-add-job")
    page.find("input[name=_save]").click()
    page.wait(lambda d: page.path == reverse("admin:sisy_job_changelist"), "the job list")
    job = Job.objects.get(job_title="browser admin job")

    # The job list shows it succeeded, with a full progress bar (the admin is not live: reload).
    def admin_job_succeeded(driver: Any) -> bool:
        row = job_row(page, job.pk)
        if row is not None:
            status = row.find_element("css selector", ".field-status").text
            if status.strip().lower() == "succeeded":
                return True
        time.sleep(0.5)
        driver.refresh()
        return False

    page.wait(admin_job_succeeded, "the admin job to succeed", timeout=JOB_DEADLINE)
    bar = job_row(page, job.pk).find_element("css selector", "progress")
    assert bar.get_attribute("value") == "100"
    page.screenshot("admin-job-succeeded")
    job.refresh_from_db()
    assert job.status == "succeeded"
    assert recorded("runs") == ["from the admin"]

    # Its page lists the job tasks with their progress.
    page.open(reverse("admin:sisy_job_change", args=[job.pk]))
    statuses = [cell.text.lower() for cell in page.find_all(".inline-group td.field-status")]
    assert statuses == ["succeeded", "succeeded"], statuses
    assert "step 10 of 10" in page.find(".inline-group").text  # slow's last progress message
    page.screenshot("admin-job-detail")

    # The live workers page shows the worker process, from its heartbeat.
    page.open(reverse("admin:sisy_workers"))
    page.wait(lambda d: f"pid {worker_pid}" in page.find("#sisy-workers").text, "the worker's row")
    assert "1 live worker" in page.find("#content-main").text
    page.screenshot("admin-workers")

    # The job page: submit its first preset through the API, watch it run to the end.
    page.open("/demo/")
    page.wait(lambda d: "Live workers: 1" in page.find("#workers-summary").text, "workers")
    page.find("#submit-job").click()
    card = page.wait(lambda d: page.find_all(".job"), "the job's card")[0]
    job_id = card.get_attribute("data-job-id")
    seen: list[str] = []

    def page_job_finished(driver: Any) -> bool:
        status = card.find_element("css selector", ".job-status").text
        if not seen or seen[-1] != status:
            seen.append(status)
            if status == "in_progress":
                page.screenshot("page-job-running")
        return status in FINISHED

    page.wait(page_job_finished, "the page's job to finish", timeout=JOB_DEADLINE)
    assert seen[-1] == "succeeded", seen
    assert "in_progress" in seen, seen  # the page followed it while it ran
    rows = card.find_elements("css selector", "tr.task")
    assert [row.get_attribute("data-status") for row in rows] == ["succeeded"] * 3
    assert all(
        row.find_element("css selector", "progress").get_attribute("value") == "1" for row in rows
    )
    assert card.find_element("css selector", ".job-percent").text == "100%"
    page.screenshot("page-job-succeeded")
    assert Job.objects.get(pk=job_id).status == "succeeded"
    assert recorded("runs") == ["from the admin", "from the page"]

    # Its links lead to the job in the admin and to the live workers page.
    admin_link = card.find_element("css selector", ".job-admin-link")
    assert admin_link.get_attribute("href") == site + reverse(
        "admin:sisy_job_change", args=[job_id]
    )
    assert page.find("#workers-link").get_attribute("href") == site + reverse("admin:sisy_workers")
    admin_link.click()
    page.wait(lambda d: "browser page job" in page.find("#content").text, "the job in the admin")


def test_job_page_shows_the_api_errors_and_stores_nothing(
    browser: Any, site: str, artifacts: Path, admin_user: Any
) -> None:
    from selenium.webdriver.support.ui import Select

    from sisy.models import Job

    page = Page(browser, site, artifacts, "errors")
    page.open("/demo/")
    page.log_in()
    page.wait(lambda d: page.path == "/demo/", "the job page")

    # Not JSON at all: the page says so before sending anything.
    spec = page.find("#job-spec")
    spec.clear()
    spec.send_keys("{not json")
    page.find("#submit-job").click()
    errors = page.wait(lambda d: page.find("#form-errors").is_displayed(), "the JSON error")
    assert errors
    assert "not valid JSON" in page.find("#form-errors").text

    # JSON the API refuses: each problem, with its task and path.
    Select(page.find("#preset")).select_by_visible_text("Invalid on purpose")
    page.find("#submit-job").click()
    page.wait(lambda d: "refused" in page.find("#form-errors").text, "the API's answer")
    text = page.find("#form-errors").text
    assert "(400): invalid job specification" in text
    assert "task 0, $.seconds: -1 is less than the minimum of 0" in text
    assert "task 1, $: unknown module 'nosuch'" in text
    page.screenshot("page-refused")
    assert not page.find_all(".job")
    assert Job.objects.count() == 0
