"""sisy: background jobs for Django, run by Channels workers over Redis.

The public API is importable from here without reading settings::

    import sisy
    job = sisy.submit({"job_title": "Thumbs", "tasks": [{"thumbnail": {"src": "a.png"}}]})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["JobSpecError", "__version__", "submit"]

if TYPE_CHECKING:
    from sisy.dispatch import submit
    from sisy.exceptions import JobSpecError


def __getattr__(name: str) -> Any:
    # Lazy, so ``import sisy`` works before Django's apps are ready
    # (setup.cfg reads __version__ from here).
    if name == "submit":
        from sisy.dispatch import submit

        return submit
    if name == "JobSpecError":
        from sisy.exceptions import JobSpecError

        return JobSpecError
    raise AttributeError(f"module 'sisy' has no attribute {name!r}")
