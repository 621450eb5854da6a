"""The admin: Jobs (read-only, cancel and retry, add from a JSON spec), scheduled Tasks, API tokens.

List pages run one annotated query (no query per row); actions are Django admin
actions, so they are POST-only, CSRF-protected and permission-checked.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Avg, Count, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from sisy import clock, cron, dispatch
from sisy import spec as specs
from sisy.exceptions import JobSpecError
from sisy.models import ApiToken, Job, JobStatus, JobTask, Task
from sisy.modules import registry


def _progress_bar(fraction: float | None) -> str:
    percent = round(100 * (fraction or 0.0))
    return format_html(
        '<progress value="{}" max="100" title="{}%" style="width:8em">{}%</progress>',
        percent,
        percent,
        percent,
    )


class JobTaskInline(admin.TabularInline):
    model = JobTask
    extra = 0
    can_delete = False
    ordering = ("position",)
    fields = (
        "position",
        "module",
        "data",
        "status",
        "progress_bar",
        "retry_count",
        "result",
        "traceback",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("progress"))
    def progress_bar(self, task: JobTask) -> str:
        message = f" {task.progress_message}" if task.progress_message else ""
        return format_html("{}{}", _progress_bar(task.progress), message)

    @admin.display(description=_("error"))
    def traceback(self, task: JobTask) -> str:
        if not task.error:
            return "-"
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', task.error)


class JobAddForm(forms.ModelForm):
    """A job specification, validated exactly as :func:`sisy.submit` validates it."""

    spec = forms.CharField(
        label=_("Job specification (JSON)"),
        widget=forms.Textarea(attrs={"rows": 16, "cols": 90, "style": "font-family:monospace"}),
    )

    class Meta:
        model = Job
        fields: list[str] = []

    def clean_spec(self) -> specs.JobSpec:
        try:
            return specs.parse(self.cleaned_data["spec"])
        except JobSpecError as exc:
            raise forms.ValidationError([str(problem) for problem in exc.problems]) from None


def _modules_help() -> str:
    items = format_html_join(
        "",
        "<li><code>{}</code><pre style='margin:0 0 .5em'>{}</pre></li>",
        ((name, json.dumps(cls.schema, indent=2)) for name, cls in registry.items() if cls.public),
    )
    return format_html(
        "<details><summary>{}</summary><ul>{}</ul></details>", _("Registered modules"), items
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "job_title",
        "status",
        "progress_bar",
        "priority",
        "worker",
        "created_at",
        "started_at",
        "finished_at",
        "duration_display",
    )
    list_filter = ("status", "created_at", "channel")
    search_fields = ("=job_id", "job_title")
    date_hierarchy = "created_at"
    inlines = (JobTaskInline,)
    actions = ("cancel_jobs", "retry_jobs")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return (
            super()
            .get_queryset(request)
            .annotate(task_progress=Avg("job_tasks__progress"), task_count=Count("job_tasks"))
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Job | None = None) -> Any:
        if obj is None:
            return ()
        return [field.name for field in Job._meta.fields] + ["duration_display"]

    def get_fields(self, request: HttpRequest, obj: Job | None = None) -> Any:
        if obj is None:
            return ("spec",)
        return super().get_fields(request, obj)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = JobAddForm
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None:
            form.base_fields["spec"].help_text = _modules_help()
        return form

    def get_inlines(self, request: HttpRequest, obj: Job | None) -> Any:
        return self.inlines if obj is not None else ()

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        return dispatch.store(form.cleaned_data["spec"])

    def save_model(self, request: HttpRequest, obj: Job, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
        # A new job was stored (and its wake-up scheduled) by save_form.

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    def get_urls(self) -> list[Any]:
        urls = [
            path(
                "workers/",
                self.admin_site.admin_view(self.workers_view),
                name="sisy_workers",
            )
        ]
        return urls + super().get_urls()

    def workers_view(self, request: HttpRequest) -> HttpResponse:
        """Live workers from their heartbeats; the page refreshes itself."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        from sisy.conf import sisy_settings
        from sisy.heartbeat import live_workers

        error = ""
        try:
            workers = live_workers()
        except Exception as exc:  # Redis away: say so instead of failing
            workers, error = [], _("Worker heartbeats cannot be read: %s") % exc
        for worker in workers:
            job_id = worker.get("job_id")
            worker["job_url"] = (
                reverse("admin:sisy_job_change", args=[job_id]) if isinstance(job_id, str) else ""
            )
            progress = worker.get("progress")
            worker["percent"] = (
                round(100 * progress) if isinstance(progress, (int, float)) else None
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": _("Workers"),
            "workers": workers,
            "error": error,
            "refresh": max(1, round(sisy_settings.WORKER_HEARTBEAT_INTERVAL)),
        }
        return TemplateResponse(request, "admin/sisy/workers.html", context)

    @admin.display(description=_("progress"))
    def progress_bar(self, job: Job) -> str:
        if job.status == JobStatus.SUCCEEDED:
            return _progress_bar(1.0)
        return _progress_bar(getattr(job, "task_progress", None))

    @admin.display(description=_("duration"))
    def duration_display(self, job: Job) -> str:
        duration = job.duration
        return "-" if duration is None else f"{duration.total_seconds():.3f} s"

    @admin.action(description=_("Cancel selected jobs"), permissions=("change",))
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(dispatch.cancel(pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, _("%d job(s) cancelled.") % done, messages.SUCCESS)

    @admin.action(description=_("Retry selected jobs"), permissions=("change",))
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(dispatch.retry(pk) for pk in queryset.values_list("pk", flat=True))
        self.message_user(request, _("%d job(s) queued again.") % done, messages.SUCCESS)


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "label",
        "schedule",
        "schedule_description",
        "enabled",
        "next_run",
        "last_run",
        "last_outcome",
        "run_count",
        "iterations",
    )
    list_filter = ("enabled", "allow_overlap")
    search_fields = ("label",)
    readonly_fields = (
        "schedule_description",
        "callable",
        "run_count",
        "last_run",
        "next_run",
        "next_runs",
        "retired_at",
        "created_at",
        "modified_at",
    )
    actions = ("run_now", "enable", "disable")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        latest = Job.objects.filter(task=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .annotate(latest_status=Subquery(latest.values("status")[:1]))
        )

    @admin.display(description=_("runs"))
    def schedule_description(self, task: Task) -> str:
        return cron.describe(task.schedule)

    @admin.display(description=_("last outcome"))
    def last_outcome(self, task: Task) -> str:
        return getattr(task, "latest_status", None) or "-"

    @admin.display(description=_("next five runs"))
    def next_runs(self, task: Task) -> str:
        if not task.enabled:
            return "-"
        runs = cron.next_runs(task.schedule, timezone.now(), timezone.get_default_timezone(), 5)
        return format_html_join(
            "", "<div>{}</div>", ((timezone.localtime(run).isoformat(" "),) for run in runs)
        )

    @admin.action(description=_("Run selected tasks now"), permissions=("change",))
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset:
            clock.run_now(task)
        self.message_user(request, _("%d run(s) queued.") % queryset.count(), messages.SUCCESS)

    @admin.action(description=_("Enable selected tasks"), permissions=("change",))
    def enable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset:  # save() plans the next run
            task.enabled = True
            task.save()
        self.message_user(request, _("%d task(s) enabled.") % queryset.count(), messages.SUCCESS)

    @admin.action(description=_("Disable selected tasks"), permissions=("change",))
    def disable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.update(enabled=False, next_run=None)
        self.message_user(request, _("%d task(s) disabled.") % count, messages.SUCCESS)


class ApiTokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("name", "user", "expires_at")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made here or by ``sisy_token``; the token itself is shown once, on creation."""

    list_display = ("name", "hint", "user", "created_at", "expires_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("name", "user__username", "hint")
    readonly_fields = ("hint", "created_at", "last_used_at")
    raw_id_fields = ("user",)

    def get_form(
        self, request: HttpRequest, obj: ApiToken | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiTokenForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        # The user of an existing token is fixed: a token is re-issued, not re-assigned.
        return (*self.readonly_fields, "user") if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        row, token = ApiToken.issue(obj.user, obj.name, expires_at=obj.expires_at)
        obj.pk, obj.digest, obj.hint, obj.created_at = row.pk, row.digest, row.hint, row.created_at
        obj._state.adding = False
        self.message_user(
            request,
            format_html(
                "{} <code>{}</code>",
                _("The new token, shown only this once; copy it now:"),
                token,
            ),
            messages.WARNING,
        )
