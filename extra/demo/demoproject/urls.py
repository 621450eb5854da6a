"""JSON views to look at jobs and workers, e.g. under ``manage.py runserver``."""

from django.urls import path
from mediaapp import views

urlpatterns = [
    path("", views.job_list, name="job-list"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("workers/", views.worker_list, name="worker-list"),
]
