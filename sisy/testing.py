"""Helpers for the tests of projects that use sisy."""

from __future__ import annotations

from collections.abc import Iterable

from sisy import runner
from sisy.conf import sisy_settings
from sisy.state import WorkerState


def run_jobs(channels: str | Iterable[str] | None = None, *, worker_id: str = "tests") -> int:
    """Run the queued jobs of ``channels`` in the calling process, as a worker would.

    ``channels`` is a channel name or several (default:
    :setting:`SISY_RUN_CHANNEL`). Each job goes through the same claim, module
    lifecycle, retries, fenced recording and signals as in ``sisy_worker``;
    jobs deferred to a later time (``run_after``, or a retry's backoff) are
    left queued. Returns how many jobs ran. No heartbeat is published and no
    lease is renewed. Inside a transaction (Django's ``TestCase``,
    pytest-django's ``django_db``), the jobs' writes join it.
    """
    if channels is None:
        names = [sisy_settings.RUN_CHANNEL]
    elif isinstance(channels, str):
        names = [channels]
    else:
        names = list(channels)
    state = WorkerState(worker_id=worker_id, channels=tuple(names))
    return sum(runner.handle_wakeup(None, state, name) for name in names)
