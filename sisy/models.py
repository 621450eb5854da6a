"""sisy's records. The database row is the source of truth; channel messages only wake workers."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


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


class JobQuerySet(models.QuerySet["Job"]):
    def claimable(self, channel: str | None = None) -> JobQuerySet:
        """Jobs a worker may start now."""
        qs = self.filter(status=JobStatus.QUEUED)
        return qs if channel is None else qs.filter(channel=channel)

    def stale(self, now: datetime, older_than: float) -> JobQuerySet:
        """Queued jobs nobody has started for ``older_than`` seconds: their wake-up may be lost."""
        return self.claimable().filter(created_at__lte=now - timedelta(seconds=older_than))

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
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ("-created_at",)
        indexes = [
            # The claim and sweep queries: queued jobs of a channel, oldest first.
            models.Index(fields=["status", "channel", "created_at"], name="sisy_job_claim_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=JobStatus.values), name="sisy_job_status_valid"
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
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="job_tasks")
    position = models.PositiveIntegerField(_("position"))
    module = models.CharField(_("module"), max_length=100)
    data = models.JSONField(_("data"), default=dict, encoder=DjangoJSONEncoder)
    status = models.CharField(
        _("status"), max_length=16, choices=JobTaskStatus.choices, default=JobTaskStatus.PENDING
    )
    progress = models.FloatField(_("progress"), default=0.0)
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
