"""URLs of sisy's JSON API: ``path("sisy/", include("sisy.urls"))``.

See :mod:`sisy.api` and the API topic in the docs; the OpenAPI document is
served at ``openapi.json``.
"""

from django.urls import path

from sisy import api

app_name = "sisy"

urlpatterns = [
    path("jobs/", api.jobs, name="jobs"),
    path("jobs/<str:job_id>/", api.job, name="job-detail"),
    path("jobs/<str:job_id>/cancel/", api.job_cancel, name="job-cancel"),
    path("jobs/<str:job_id>/retry/", api.job_retry, name="job-retry"),
    path("workers/", api.workers, name="workers"),
    path("modules/", api.modules, name="modules"),
    path("openapi.json", api.openapi_document, name="openapi"),
]
