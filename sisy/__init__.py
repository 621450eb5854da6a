"""sisy: background jobs for Django, run by Channels workers over Redis.

The public API is importable from here without reading settings::

    import sisy
    job = sisy.submit({"job_title": "Thumbs", "tasks": [{"thumbnail": {"src": "a.png"}}]})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "JobCancelled",
    "JobSpecError",
    "__version__",
    "cancel",
    "retry",
    "submit",
    "submit_many",
]

if TYPE_CHECKING:
    from sisy.dispatch import cancel, retry, submit, submit_many
    from sisy.exceptions import JobCancelled, JobSpecError


def __getattr__(name: str) -> Any:
    # Lazy, so ``import sisy`` works before Django's apps are ready
    # (setup.cfg reads __version__ from here).
    if name in ("submit", "submit_many", "cancel", "retry"):
        from sisy import dispatch

        return getattr(dispatch, name)
    if name in ("JobSpecError", "JobCancelled"):
        from sisy import exceptions

        return getattr(exceptions, name)
    raise AttributeError(f"module 'sisy' has no attribute {name!r}")
