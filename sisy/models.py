"""sisy's records. The database row is the source of truth; channel messages only wake workers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from sisy.tokens import ApiToken as ApiToken  # the API's tokens live in their own module


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobTaskStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
UNFINISHED = (JobStatus.QUEUED, JobStatus.IN_PROGRESS)


class TaskQuerySet(models.QuerySet["Task"]):
    def due(self, now: datetime) -> TaskQuerySet:
        """Enabled Tasks whose next run has come."""
        return self.filter(enabled=True, next_run__lte=now)


class Task(models.Model):
    """A scheduled task: a task function, its cron schedule and its run controls.

    Every firing becomes a :class:`Job`, so a Task's runs have history, errors
    and crash recovery. Create one with :func:`task_with_callable` (then
    ``save()``), :meth:`Task.run_once` or :meth:`Task.run_iterations`.
    """

    label = models.CharField(_("label"), max_length=200, unique=True)
    schedule = models.CharField(
        _("schedule"), max_length=200, help_text=_("Cron: minute hour day month weekday [second].")
    )
    callable = models.JSONField(
        _("task function"), help_text=_("How a worker finds the task function again.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    start_running = models.DateTimeField(_("start running"), null=True, blank=True)
    end_running = models.DateTimeField(_("end running"), null=True, blank=True)
    wait_for_schedule = models.BooleanField(
        _("wait for schedule"),
        default=True,
        help_text=_(
            "If unset, the first run is due at once rather than at the first scheduled time."
        ),
    )
    iterations = models.PositiveIntegerField(
        _("iterations"), default=0, help_text=_("How many times to run; 0 runs forever.")
    )
    run_count = models.PositiveIntegerField(_("runs so far"), default=0)
    allow_overlap = models.BooleanField(
        _("allow overlap"),
        default=True,
        help_text=_("If unset, a run is skipped while the previous one is queued or running."),
    )
    userdata = models.JSONField(_("user data"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    last_run = models.DateTimeField(_("last run"), null=True, blank=True)
    next_run = models.DateTimeField(_("next run"), null=True, blank=True)
    retired_at = models.DateTimeField(_("retired"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    modified_at = models.DateTimeField(_("modified"), auto_now=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        verbose_name = _("scheduled task")
        verbose_name_plural = _("scheduled tasks")
        ordering = ("label",)
        indexes = [
            models.Index(fields=["next_run"], condition=Q(enabled=True), name="sisy_task_due_idx"),
        ]

    #: Fields the clock owns once a Task is stored: ``save()`` leaves them alone,
    #: so saving a copy read before the last firing cannot turn the clock back.
    CLOCK_FIELDS = frozenset({"run_count", "last_run", "next_run", "retired_at"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._saved_plan = self._plan()

    def __str__(self) -> str:
        return self.label

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Validate the schedule; work out ``next_run`` when the plan changed.

        On an existing row the clock's fields (``run_count``, ``last_run``, and
        ``next_run``/``retired_at`` unless the plan changed) are not written.
        """
        from sisy import cron

        cron.parse(self.schedule)  # ValueError naming the field
        plan = self._plan()
        replanned = self._state.adding or plan != self._saved_plan
        if self.enabled and (replanned or self.next_run is None):
            self.retired_at = None  # (re-)enabled: not retired any more
            self._plan_first_run(timezone.now())
            replanned = True
        if not self.enabled:
            self.next_run = None
        if not self._state.adding and kwargs.get("update_fields") is None:
            skip = self.CLOCK_FIELDS - ({"next_run", "retired_at"} if replanned else set())
            kwargs["update_fields"] = [
                f.name
                for f in self._meta.concrete_fields
                if not f.primary_key and f.name not in skip
            ]
        super().save(*args, **kwargs)
        self._saved_plan = plan

    def _plan(self) -> tuple[Any, ...]:
        return (
            self.schedule,
            self.enabled,
            self.start_running,
            self.end_running,
            self.wait_for_schedule,
            self.iterations,
        )

    def _plan_first_run(self, now: datetime) -> None:
        from sisy import scheduling

        if self.iterations and self.run_count >= self.iterations:
            self.next_run, self.enabled, self.retired_at = None, False, now
            return
        outcome = scheduling.first_run(
            self.schedule,
            now,
            timezone.get_default_timezone(),
            start_running=self.start_running,
            end_running=self.end_running,
            wait_for_schedule=self.wait_for_schedule,
        )
        self.next_run = outcome.next_run
        if outcome.retire:
            self.enabled, self.retired_at = False, now

    @property
    def is_retired(self) -> bool:
        return self.retired_at is not None

    @classmethod
    def run_once(
        cls,
        the_callable: Callable[..., Any] | str,
        delay_until: datetime | None = None,
        *,
        label: str | None = None,
        userdata: dict[str, Any] | None = None,
        pk_override: Any = None,
    ) -> Task:
        """Run ``the_callable`` once, as soon as possible or at ``delay_until``; saved."""
        if delay_until is not None:
            if timezone.is_naive(delay_until):
                raise ValueError("delay_until must be an aware datetime")
            if delay_until <= timezone.now():
                raise ValueError("delay_until must be in the future")
        task = task_with_callable(
            the_callable, label=label, userdata=userdata, pk_override=pk_override, unique_label=True
        )
        task.iterations = 1
        task.wait_for_schedule = False
        task.start_running = delay_until
        task.save()
        return task

    @classmethod
    def run_iterations(
        cls,
        the_callable: Callable[..., Any] | str,
        schedule: str | None = None,
        iterations: int = 1,
        *,
        label: str | None = None,
        userdata: dict[str, Any] | None = None,
        pk_override: Any = None,
    ) -> Task:
        """Run ``the_callable`` on ``schedule`` for ``iterations`` runs; saved."""
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1, not {iterations!r}")
        task = task_with_callable(
            the_callable,
            label=label,
            schedule=schedule,
            userdata=userdata,
            pk_override=pk_override,
            unique_label=True,
        )
        task.iterations = iterations
        task.save()
        return task


def task_with_callable(
    the_callable: Callable[..., Any] | str,
    label: str | None = None,
    schedule: str | None = None,
    userdata: dict[str, Any] | None = None,
    pk_override: Any = None,
    *,
    unique_label: bool = False,
) -> Task:
    """An unsaved :class:`Task` running ``the_callable`` (a callable or a dotted path).

    ``ValueError`` names the problem with the callable, the schedule or the
    user data. The label defaults to the dotted path.
    """
    from sisy import callables, cron
    from sisy.conf import sisy_settings

    description = callables.describe(the_callable, pk_override=pk_override)
    schedule = sisy_settings.DEFAULT_SCHEDULE if schedule is None else schedule
    cron.parse(schedule)
    if userdata is not None and not isinstance(userdata, dict):
        raise ValueError(f"userdata must be a dict, not {type(userdata).__name__}")
    if label is None:
        label = description["path"]
        if unique_label:
            label = f"{label} #{uuid.uuid4().hex[:8]}"
    return Task(label=label, schedule=schedule, callable=description, userdata=userdata or {})


def taskinfo_with_label(label: str) -> dict[str, Any]:
    """The stored task function description of the Task ``label`` (with ``model_pk``)."""
    description: dict[str, Any] = Task.objects.get(label=label).callable
    return description


class JobQuerySet(models.QuerySet["Job"]):
    def claimable(self, channel: str | None = None, now: datetime | None = None) -> JobQuerySet:
        """Jobs a worker may start now: queued, and not deferred past ``now``."""
        due = Q(run_after__isnull=True) | Q(run_after__lte=now or timezone.now())
        qs = self.filter(due, status=JobStatus.QUEUED)
        return qs if channel is None else qs.filter(channel=channel)

    def stale(self, now: datetime, older_than: float) -> JobQuerySet:
        """Queued jobs nobody has started for ``older_than`` seconds: their wake-up may be lost.

        Deferred jobs are not among them: they never had a wake-up, see :meth:`deferred_due`.
        """
        return self.filter(
            status=JobStatus.QUEUED,
            run_after__isnull=True,
            created_at__lte=now - timedelta(seconds=older_than),
        )

    def deferred_due(self, now: datetime) -> JobQuerySet:
        """Queued deferred jobs whose ``run_after`` has come: they wait for a wake-up."""
        return self.filter(status=JobStatus.QUEUED, run_after__isnull=False, run_after__lte=now)

    def expired_leases(self, now: datetime) -> JobQuerySet:
        """Running jobs whose worker stopped renewing its lease: it is presumed dead."""
        return self.filter(status=JobStatus.IN_PROGRESS, lease_expires_at__lt=now)

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=FINISHED)


class Job(models.Model):
    """One requested piece of work: an ordered list of job tasks, run by one worker at a time."""

    job_id = models.UUIDField(_("job id"), primary_key=True, default=uuid.uuid4, editable=False)
    job_title = models.CharField(_("title"), max_length=200, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED
    )
    channel = models.CharField(
        _("channel"),
        max_length=100,
        help_text=_("The channel whose workers run this job."),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    attempts = models.PositiveIntegerField(
        _("attempts"), default=0, help_text=_("How many times a worker has started this job.")
    )
    max_attempts = models.PositiveIntegerField(_("max attempts"), default=3)
    retries = models.PositiveSmallIntegerField(
        _("retries"),
        null=True,
        blank=True,
        help_text=_("How many times each failed task is tried again; empty: the module's own."),
    )
    time_limit = models.FloatField(
        _("time limit"),
        null=True,
        blank=True,
        help_text=_("Seconds each task may run; empty: the module's own."),
    )
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    task = models.ForeignKey(
        Task,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="jobs",
        verbose_name=_("scheduled task"),
        db_index=False,  # sisy_job_one_per_run starts with it
    )
    scheduled_for = models.DateTimeField(_("scheduled for"), null=True, blank=True)
    priority = models.SmallIntegerField(
        _("priority"),
        default=0,
        help_text=_("Among the queued jobs of a channel, higher priorities start first."),
    )
    run_after = models.DateTimeField(
        _("run after"),
        null=True,
        blank=True,
        help_text=_("Not started before this time; empty: as soon as possible."),
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ("-created_at",)
        indexes = [
            # The claim: queued jobs of a channel, highest priority first, then oldest.
            models.Index(
                fields=["status", "channel", "-priority", "created_at"],
                name="sisy_job_claim_prio_idx",
            ),
            # The clock's pass over deferred jobs that became due.
            models.Index(
                fields=["run_after"],
                condition=Q(status=JobStatus.QUEUED, run_after__isnull=False),
                name="sisy_job_deferred_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=JobStatus.values), name="sisy_job_status_valid"
            ),
            # Each scheduled run of a Task becomes one Job, however many clocks tick.
            # Partial, so that a job submitted by hand costs no write to it.
            models.UniqueConstraint(
                fields=["task", "scheduled_for"],
                condition=Q(task__isnull=False),
                name="sisy_job_one_per_run",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_title or 'job'} ({self.job_id})"

    @property
    def is_finished(self) -> bool:
        """Succeeded, failed or cancelled: nothing will run it again."""
        return self.status in FINISHED

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    def ordered_tasks(self) -> list[JobTask]:
        """The job's tasks in the order they run."""
        return list(self.job_tasks.order_by("position"))


class JobTask(models.Model):
    """One step of a job: a module and its data, run in ``position`` order."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,
        related_name="job_tasks",
        db_index=False,  # sisy_jobtask_position_uniq starts with it
    )
    position = models.PositiveIntegerField(_("position"))
    module = models.CharField(_("module"), max_length=100)
    data = models.JSONField(_("data"), default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(
        _("status"), max_length=16, choices=JobTaskStatus.choices, default=JobTaskStatus.PENDING
    )
    progress = models.FloatField(_("progress"), default=0.0)
    retry_count = models.PositiveSmallIntegerField(
        _("retries so far"),
        default=0,
        help_text=_("How many times this task failed and was retried."),
    )
    progress_message = models.CharField(_("progress message"), max_length=200, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(_("error"), blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("job task")
        verbose_name_plural = _("job tasks")
        ordering = ("job", "position")
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="sisy_jobtask_position_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.position}: {self.module}"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def as_spec(self) -> dict[str, Any]:
        return {"module": self.module, "data": self.data}
