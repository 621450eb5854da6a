"""Read-only JSON views of sisy's records, for poking at the demo with a browser or curl."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from sisy.heartbeat import live_workers
from sisy.models import Job, JobTask


def _seconds(job_or_task: Job | JobTask) -> float | None:
    duration = job_or_task.duration
    return None if duration is None else round(duration.total_seconds(), 3)


def job_as_dict(job: Job, *, with_tasks: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": str(job.job_id),
        "job_title": job.job_title,
        "status": job.status,
        "created_at": job.created_at,
        "seconds": _seconds(job),
        "attempts": job.attempts,
        "worker": job.worker,
        "error": job.error,
    }
    if with_tasks:
        data["tasks"] = [
            {
                "position": task.position,
                "module": task.module,
                "status": task.status,
                "progress": task.progress,
                "seconds": _seconds(task),
                "result": task.result,
                "error": task.error,
            }
            for task in job.ordered_tasks()
        ]
    return data


def job_list(request: HttpRequest) -> JsonResponse:
    jobs = Job.objects.all()[:20]
    return JsonResponse({"jobs": [job_as_dict(job) for job in jobs]})


def job_detail(request: HttpRequest, job_id: uuid.UUID) -> JsonResponse:
    job = get_object_or_404(Job, pk=job_id)
    return JsonResponse(job_as_dict(job, with_tasks=True))


def worker_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"workers": live_workers()})
