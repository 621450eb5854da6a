"""Exceptions sisy raises to its callers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError

from sisy.modules import Problem


class JobSpecError(ValidationError):
    """A job specification or a job task's data is invalid; nothing was stored.

    ``problems`` lists each one with the task index and the JSON path, so a
    form, an API response or a log line can say exactly what to fix.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(
            [ValidationError(str(problem), code="invalid_job") for problem in self.problems]
        )

    def as_details(self) -> list[dict[str, Any]]:
        """Each problem as ``{"task": index or None, "path": "$...", "message": "..."}``."""
        return [problem.as_dict() for problem in self.problems]


class JobCancelled(Exception):
    """Raised inside a module (by ``progress()``) when its job was cancelled.

    Let it propagate: the worker runs ``cleanup()`` and records the job as
    cancelled.
    """


class TimeLimitExceeded(Exception):
    """A job task ran past its time limit and was stopped.

    Raised inside the module's thread (at the next Python instruction it runs)
    and recorded as the task's error. A module stuck in C code that does not
    return within the grace period is abandoned: its worker process replaces
    itself, after recording the same error. See :ref:`time-limits`.
    """
