"""A model whose methods are task functions, and the log the demo's Tasks write.

A task function takes one parameter, ``message``: ``{"task": <Task>, "message":
{"job": ..., "scheduled_for": ..., "attempt": ...}}``. ``Customer`` has all three
kinds of method a Task can run:

- ``greet``, an instance method: a Task stores the customer's primary key (a
  UUID here) and the worker fetches the customer again for every run;
- ``census``, a classmethod, and ``tidy``, a staticmethod: found by their path.

``scheduleapp/tasks.py`` has the plain functions.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.db import models
from django.db.models import F
from django.utils import timezone

#: How long ``Customer.tidy`` keeps the run log.
KEEP_LOG_FOR = timedelta(minutes=10)


class RunLog(models.Model):
    """One line per run of a demo Task, written by the task function itself."""

    #: The run's Job: the idempotency key. Execution is at least once, so a run
    #: retried after a lost worker updates its line instead of adding one.
    job_id = models.UUIDField(unique=True, null=True, blank=True)
    label = models.CharField(max_length=200)
    kind = models.CharField(max_length=20)
    text = models.CharField(max_length=200)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.label}: {self.text}"

    @classmethod
    def write(cls, message: dict[str, Any], kind: str, text: str) -> RunLog:
        run = message["message"]
        fields = {
            "label": message["task"].label,
            "kind": kind,
            "text": text[:200],
            "scheduled_for": run.get("scheduled_for"),
        }
        if run.get("job") is None:
            return cls.objects.create(**fields)
        entry, _created = cls.objects.update_or_create(job_id=run["job"], defaults=fields)
        return entry


class Customer(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    greetings = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def greet(self, message: dict[str, Any]) -> str:
        """An instance method: the Task names this customer by its primary key."""
        Customer.objects.filter(pk=self.pk).update(greetings=F("greetings") + 1)
        text = f"hello {self.name} (greeting #{self.greetings + 1})"
        RunLog.write(message, "method", text)
        return text

    @classmethod
    def census(cls, message: dict[str, Any]) -> int:
        """A classmethod: counts the customers."""
        count = cls._default_manager.count()
        RunLog.write(message, "classmethod", f"{cls.__name__}: {count} customer(s)")
        return count

    @staticmethod
    def tidy(message: dict[str, Any]) -> int:
        """A staticmethod: deletes run log lines older than ``KEEP_LOG_FOR``."""
        cutoff = timezone.now() - KEEP_LOG_FOR
        deleted, _by_model = RunLog.objects.filter(created_at__lt=cutoff).delete()
        minutes = KEEP_LOG_FOR.total_seconds() / 60
        text = f"deleted {deleted} log line(s) older than {minutes:g} min"
        RunLog.write(message, "staticmethod", text)
        return deleted
