"""Real-browser tests: headless Chromium driven by Selenium through chromedriver.

They run when Selenium, Chromium and chromedriver are all there (Debian:
``apt-get install chromium chromium-driver``, ``pip install selenium``) and
are skipped otherwise, unless ``SISY_BROWSER=1`` (tox's ``browser`` env), which
makes a missing piece an error. ``SISY_CHROMIUM`` and ``SISY_CHROMEDRIVER`` name
the programs when they are not on PATH. Screenshots go to ``SISY_ARTIFACTS``
(default /tmp/sisy-artifacts).

The site is served by Django's live server thread (WSGI: the admin and the API
need no ASGI), with this directory's URLconf, the admin's static files, and the
demo's job page template; jobs are run by real ``sisy_worker`` processes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django.contrib.admin
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TEMPLATES = ROOT / "extra" / "demo" / "mediaapp" / "templates"
ADMIN_STATIC = Path(django.contrib.admin.__file__).resolve().parent / "static"
#: Without these, Chromium on a machine without internet waits on connections it
#: tries to make (updates, sync, QUIC probes) and the first page load hangs.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)


def chromium() -> str | None:
    named = os.environ.get("SISY_CHROMIUM")
    if named:
        return shutil.which(named)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromedriver() -> str | None:
    return shutil.which(os.environ.get("SISY_CHROMEDRIVER") or "chromedriver")


def missing_pieces() -> list[str]:
    missing = []
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install selenium)")
    if chromium() is None:
        missing.append("Chromium (apt-get install chromium, or SISY_CHROMIUM=<program>)")
    if chromedriver() is None:
        missing.append(
            "chromedriver (apt-get install chromium-driver, or SISY_CHROMEDRIVER=<program>)"
        )
    return missing


def browser_required() -> bool:
    return os.environ.get("SISY_BROWSER") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if browser_required():
        return  # the browser fixture fails, naming what is missing
    missing = missing_pieces()
    if not missing:
        return
    reason = f"browser tests need {', '.join(missing)}; SISY_BROWSER=1 to insist"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots and the chromedriver log go."""
    directory = Path(os.environ.get("SISY_ARTIFACTS") or "/tmp/sisy-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def browser(artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium with a fresh profile; quit after the test."""
    missing = missing_pieces()
    if missing:
        pytest.fail(f"SISY_BROWSER=1 but these are missing: {'; '.join(missing)}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager must not try to download a browser or a driver: both are given.
    monkeypatch.setenv("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="sisy-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium())
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(
        executable_path=str(chromedriver()), log_output=str(artifacts / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def site(settings: Any, transactional_db: None) -> Iterator[str]:
    """The test site on a live server thread (127.0.0.1, a free port); yields its base URL."""
    from django.test.testcases import LiveServerThread, _StaticFilesHandler

    settings.ROOT_URLCONF = "tests.browser.urls"
    settings.STATIC_URL = "/static/"
    settings.STATIC_ROOT = str(ADMIN_STATIC)
    settings.MEDIA_URL = "/media/"
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [str(DEMO_TEMPLATES)]}]
    server = LiveServerThread("127.0.0.1", _StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait(30)
    if server.error:
        raise server.error
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.terminate()
