"""The demo's URLs: the job page, the admin and sisy's JSON API."""

from django.contrib import admin
from django.urls import include, path
from mediaapp import views

urlpatterns = [
    path("", views.job_page, name="job-page"),
    path("admin/", admin.site.urls),
    path("sisy/", include("sisy.urls")),
]
