from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules
from django.utils.translation import gettext_lazy as _


class SisyConfig(AppConfig):
    name = "sisy"
    verbose_name = _("sisy background jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from importlib import import_module

        from sisy import checks  # noqa: F401  (registers the system checks)
        from sisy.conf import sisy_settings

        # Modules live in each installed app's sisy_modules.py, and in any
        # module listed in SISY_MODULES. Importing them registers them.
        autodiscover_modules("sisy_modules")
        try:
            extra = sisy_settings.MODULES
        except ValueError:
            extra = ()  # reported by check sisy.E003
        for path in extra:
            import_module(path)
