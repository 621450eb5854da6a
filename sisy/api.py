"""sisy's JSON API, mounted with ``path("sisy/", include("sisy.urls"))``.

Every answer is JSON, errors included: ``{"error": "...", "details": [...]}``
where each detail is ``{"task": index or null, "path": "$...", "message": "..."}``.

Callers authenticate with their Django session (CSRF enforced on POST) or with
an ``Authorization: Bearer <token>`` header carrying an :class:`~sisy.models.ApiToken`
(no CSRF: the header is not sent by browsers on their own). Permissions are
Django's: ``sisy.add_job`` to submit, ``sisy.view_job`` to read, ``sisy.change_job``
to cancel or retry.

The request body is read only up to :setting:`SISY_API_MAX_BODY_SIZE` bytes, parsed as
strict JSON, and checked against depth, item and string limits before the job
specification is validated exactly as :func:`sisy.submit` validates it. Only
registered, public module names are accepted: nothing a client sends is ever
imported.
"""

from __future__ import annotations

import inspect
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.db import IntegrityError
from django.db.models import Avg, Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from sisy import dispatch
from sisy import spec as specs
from sisy.conf import sisy_settings
from sisy.exceptions import JobSpecError
from sisy.models import Job, JobStatus, JobTask
from sisy.modules import registry
from sisy.tokens import ApiToken

JSON_TYPES = ("application/json",)
MAX_PAGE_SIZE = 500
QUEUE_FULL_RETRY_AFTER = 30


class ApiError(Exception):
    """An answer other than success: an HTTP status, a message, optional details."""

    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        answer = JsonResponse({"error": self.message, "details": self.details}, status=self.status)
        for name, value in self.headers.items():
            answer[name] = value
        return answer


Handler = Callable[..., HttpResponse]


def endpoint(**handlers: Handler) -> Handler:
    """One view per URL, dispatching on the method; errors become JSON answers."""
    allowed = sorted({method.upper() for method in handlers} | {"OPTIONS"})
    if "GET" in allowed:
        allowed = sorted({*allowed, "HEAD"})

    @csrf_exempt  # checked in authenticate() for session callers only
    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        method = request.method or ""
        if method == "OPTIONS":
            answer = HttpResponse(status=204)
            answer["Allow"] = ", ".join(allowed)
            return answer
        handler = handlers.get(("GET" if method == "HEAD" else method).lower())
        try:
            if handler is None:
                raise ApiError(
                    405, f"method {method[:20]} not allowed", headers={"Allow": ", ".join(allowed)}
                )
            return handler(request, **kwargs)
        except ApiError as error:
            return error.response()

    return view


# -- authentication ----------------------------------------------------------


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering with the reason instead of a page."""

    def _reject(self, request: HttpRequest, reason: str) -> Any:
        return reason


def _no_response(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
    raise AssertionError("the CSRF check does not call the view")


def authenticate(request: HttpRequest) -> Any:
    """The calling user, from a bearer token or the session; 401 if neither."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(
                401,
                "the Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": 'Bearer realm="sisy"'},
            )
        user = ApiToken.authenticate(credentials.strip())
        if user is None:
            raise ApiError(
                401,
                "invalid, expired or revoked token",
                headers={"WWW-Authenticate": 'Bearer realm="sisy", error="invalid_token"'},
            )
        return user
    user = getattr(request, "user", None) or AnonymousUser()
    if not user.is_authenticated:
        raise ApiError(
            401,
            "authentication required: log in, or send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="sisy"'},
        )
    if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        check = _CsrfCheck(_no_response)
        check.process_request(request)
        reason = check.process_view(request, _no_response, (), {})
        if reason is not None:
            raise ApiError(403, f"CSRF check failed: {reason}")
    return user


def require(request: HttpRequest, permission: str) -> Any:
    user = authenticate(request)
    if not user.has_perm(permission):
        raise ApiError(403, f"you need the permission {permission!r}")
    return user


# -- reading a body ----------------------------------------------------------


def read_json(request: HttpRequest) -> Any:
    """The body as strict JSON, within the configured limits, or an ApiError."""
    if request.content_type not in JSON_TYPES:
        raise ApiError(415, "send the job specification as application/json")
    limit = sisy_settings.API_MAX_BODY_SIZE
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.strip():
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ApiError(400, "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    check_limits(value)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return value


def check_limits(value: Any) -> None:
    """Depth, item count and string length limits, and finite numbers only."""
    max_depth = sisy_settings.API_MAX_DEPTH
    max_items = sisy_settings.API_MAX_ITEMS
    max_string = sisy_settings.API_MAX_STRING_LENGTH
    items = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise ApiError(400, f"the JSON is nested deeper than {max_depth} levels")
            items += len(node)
            if items > max_items:
                raise ApiError(400, f"the JSON has more than {max_items} keys and items")
            if isinstance(node, dict):
                for key, child in node.items():
                    if len(key) > max_string:
                        raise ApiError(400, f"a key is longer than {max_string} characters")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, str):
            if len(node) > max_string:
                raise ApiError(400, f"a string is longer than {max_string} characters")
        elif isinstance(node, float) and not math.isfinite(node):
            raise ApiError(400, "numbers must be finite")


# -- representations ---------------------------------------------------------


def _time(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def job_url(job: Job | uuid.UUID | str) -> str:
    job_id = job.job_id if isinstance(job, Job) else job
    return reverse("sisy:job-detail", kwargs={"job_id": str(job_id)})


def job_summary(job: Job, progress: float | None, task_count: int) -> dict[str, Any]:
    return {
        "job_id": str(job.job_id),
        "url": job_url(job),
        "title": job.job_title,
        "status": job.status,
        "channel": job.channel,
        "priority": job.priority,
        "run_after": _time(job.run_after),
        "progress": 1.0 if job.status == JobStatus.SUCCEEDED else round(progress or 0.0, 4),
        "task_count": task_count,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "retries": job.retries,
        "time_limit": job.time_limit,
        "worker": job.worker or None,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "error": job.error,
    }


def task_detail(task: JobTask) -> dict[str, Any]:
    return {
        "position": task.position,
        "module": task.module,
        "data": task.data,
        "status": task.status,
        "progress": round(task.progress, 4),
        "progress_message": task.progress_message,
        "retry_count": task.retry_count,
        "result": task.result,
        "error": task.error,
        "started_at": _time(task.started_at),
        "finished_at": _time(task.finished_at),
    }


def job_detail(job: Job) -> dict[str, Any]:
    tasks = job.ordered_tasks()
    progress = sum(t.progress for t in tasks) / len(tasks) if tasks else 0.0
    return {**job_summary(job, progress, len(tasks)), "tasks": [task_detail(t) for t in tasks]}


def _json(payload: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(payload, status=status, json_dumps_params={"allow_nan": False})


def _get_job(job_id: str) -> Job:
    try:
        pk = uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, f"no job {job_id[:64]!r}: job ids are UUIDs") from None
    job = Job.objects.filter(pk=pk).first()
    if job is None:
        raise ApiError(404, f"no job {pk}")
    return job


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer", [_detail(name, "not an integer")]
        ) from None
    if not low <= value <= high:
        message = f"must be between {low} and {high}"
        raise ApiError(400, f"{name} {message}", [_detail(name, message)])
    return value


def _detail(parameter: str, message: str) -> dict[str, Any]:
    return {"task": None, "path": parameter, "message": message}


# -- handlers ----------------------------------------------------------------


def list_jobs(request: HttpRequest) -> HttpResponse:
    require(request, "sisy.view_job")
    queryset = Job.objects.all()
    statuses = request.GET.getlist("status")
    for status in statuses:
        if status not in JobStatus.values:
            message = f"{status[:32]!r} is not one of {', '.join(JobStatus.values)}"
            raise ApiError(400, f"unknown status: {message}", [_detail("status", message)])
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    page_size = _int_param(request, "page_size", sisy_settings.API_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    count = queryset.count()
    last_page = max(1, math.ceil(count / page_size))
    page = _int_param(request, "page", 1, 1, last_page)
    rows = queryset.order_by("-created_at", "job_id").annotate(
        task_progress=Avg("job_tasks__progress"), task_count=Count("job_tasks")
    )[(page - 1) * page_size : page * page_size]
    return _json(
        {
            "count": count,
            "page": page,
            "page_size": page_size,
            "pages": last_page,
            "results": [
                {
                    **job_summary(job, job.task_progress, job.task_count),
                    "error": _last_line(job.error),
                }
                for job in rows
            ],
        }
    )


def _last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[-1] if lines else ""


def create_job(request: HttpRequest) -> HttpResponse:
    require(request, "sisy.add_job")
    body = read_json(request)
    if not isinstance(body, dict):  # parse() would read a string as JSON text
        raise ApiError(
            400,
            "invalid job specification",
            [{"task": None, "path": "$", "message": "a job specification must be a JSON object"}],
        )
    try:
        job_spec = specs.parse(body)
    except JobSpecError as exc:
        raise ApiError(400, "invalid job specification", exc.as_details()) from None
    limit = sisy_settings.MAX_QUEUED_JOBS
    if limit is not None and Job.objects.filter(status=JobStatus.QUEUED).count() >= limit:
        raise ApiError(
            503,
            f"{limit} jobs are already queued; try again later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)},
        )
    try:
        job = dispatch.store(job_spec)
    except JobSpecError as exc:  # the job id is taken
        raise ApiError(409, "a job with this id already exists", exc.as_details()) from None
    except IntegrityError:
        raise ApiError(409, "a job with this id already exists") from None
    answer = _json(job_detail(job), status=201)
    answer["Location"] = job_url(job)
    return answer


def show_job(request: HttpRequest, job_id: str) -> HttpResponse:
    require(request, "sisy.view_job")
    return _json(job_detail(_get_job(job_id)))


def cancel_job(request: HttpRequest, job_id: str) -> HttpResponse:
    require(request, "sisy.change_job")
    job = _get_job(job_id)
    if not dispatch.cancel(job.pk):
        job.refresh_from_db()
        raise ApiError(409, f"the job has already finished ({job.status})")
    job.refresh_from_db()
    return _json(job_detail(job))


def retry_job(request: HttpRequest, job_id: str) -> HttpResponse:
    require(request, "sisy.change_job")
    job = _get_job(job_id)
    if not dispatch.retry(job.pk):
        raise ApiError(409, f"only a failed or cancelled job can be retried, not {job.status}")
    job.refresh_from_db()
    return _json(job_detail(job))


def list_workers(request: HttpRequest) -> HttpResponse:
    from sisy.heartbeat import live_workers

    require(request, "sisy.view_job")
    try:
        workers = live_workers()
    except Exception as exc:  # Redis away: say so, as an answer
        raise ApiError(503, f"cannot read worker heartbeats from Redis: {exc}") from None
    return _json({"count": len(workers), "results": workers})


def _description(module: type) -> str:
    """The first paragraph of the module class's own docstring ("" without one, not its base's)."""
    doc = module.__dict__.get("__doc__")
    return inspect.cleandoc(doc).split("\n\n")[0] if isinstance(doc, str) else ""


def list_modules(request: HttpRequest) -> HttpResponse:
    require(request, "sisy.add_job")
    return _json(
        {
            "results": [
                {
                    "name": name,
                    "description": _description(module),
                    "schema": module.schema,
                }
                for name, module in registry.items()
                if module.public
            ]
        }
    )


def openapi(request: HttpRequest) -> HttpResponse:
    from sisy.openapi import document

    return _json(document())


jobs = endpoint(get=list_jobs, post=create_job)
job = endpoint(get=show_job)
job_cancel = endpoint(post=cancel_job)
job_retry = endpoint(post=retry_job)
workers = endpoint(get=list_workers)
modules = endpoint(get=list_modules)
openapi_document = endpoint(get=openapi)
