"""Django signals sent as jobs move through their lives.

- ``job_queued(sender=Job, job)``: after the job's row is committed (not for
  the jobs the clock fires on a scheduled Task's schedule).
- ``job_started(sender=Job, job, worker)``: a worker claimed it.
- ``job_finished(sender=Job, job, status)``: succeeded, failed or cancelled
  (sent by the worker that ran it, or by :func:`sisy.cancel` for a queued job).
- ``task_failed(sender=JobTask, job, job_task, error, retrying)``: one job
  task failed; ``retrying`` when it will be tried again.

Receivers run in the process that sends: the one that queued the job for ``job_queued``,
the worker for the others. An exception in a receiver is logged, never
allowed to fail the job.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("sisy.signals")

job_queued = Signal()
job_started = Signal()
job_finished = Signal()
task_failed = Signal()


def send(signal: Signal, sender: Any, **kwargs: Any) -> None:
    for receiver, response in signal.send_robust(sender, **kwargs):
        if isinstance(response, Exception):
            logger.error("sisy: signal receiver %r failed", receiver, exc_info=response)
