"""The browser tests' URLconf: the admin, sisy's API, and the demo's job page.

The page is the demo's own template (extra/demo/mediaapp/templates), rendered
with job presets made of the test suite's modules.
"""

from typing import Any

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import include, path

#: The page's choices: a job of three steps that takes a few seconds, and one the API refuses.
PRESETS: list[dict[str, Any]] = [
    {
        "name": "Two slow steps and a record",
        "spec": {
            "job_title": "browser page job",
            "tasks": [
                {"slow": {"seconds": 1.5}},
                {"slow": {"seconds": 1.0}},
                {"record": {"label": "from the page"}},
            ],
        },
    },
    {
        "name": "Invalid on purpose",
        "spec": {"tasks": [{"slow": {"seconds": -1}}, {"nosuch": {}}]},
    },
]


@login_required(login_url="admin:login")
def job_page(request: HttpRequest) -> HttpResponse:
    return render(request, "sisy_demo/jobs.html", {"presets": PRESETS, "notes": []})


urlpatterns = [
    path("demo/", job_page, name="job-page"),
    path("admin/", admin.site.urls),
    path("sisy/", include("sisy.urls")),
]
