from __future__ import annotations

import contextlib

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class SisyConfig(AppConfig):
    name = "sisy"
    verbose_name = _("sisy background jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from importlib import import_module

        from django.conf import settings

        from sisy import checks  # noqa: F401  (registers the system checks)
        from sisy.conf import sisy_settings

        # Django registers its check of TASKS (which runs each backend's own
        # check, sisy's included) only once django.tasks is imported: make
        # sure it is where TASKS is set, so that `manage.py check` runs it.
        if getattr(settings, "TASKS", None):
            with contextlib.suppress(ImportError):  # Django < 6.0 has no django.tasks
                import_module("django.tasks")

        # Modules live in each installed app's sisy_modules.py, and in any
        # module listed in SISY_MODULES. Importing them registers them.
        autodiscover_modules("sisy_modules")
        try:
            extra = sisy_settings.MODULES
        except ValueError:
            extra = ()  # reported by check sisy.E003
        for path in extra:
            try:
                import_module(path)
            except ModuleNotFoundError as exc:
                # The listed module itself (or its package) is missing, not
                # something it imports: say which setting names it.
                if exc.name is None or not (path == exc.name or path.startswith(exc.name + ".")):
                    raise
                raise ImproperlyConfigured(
                    f"SISY_MODULES lists {path!r}, which cannot be imported: {exc}"
                ) from exc
