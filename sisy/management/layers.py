"""What sisy's commands share: the channel layer a ``--layer`` option names."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from sisy.conf import sisy_settings


def channel_layer(alias: str | None) -> Any:
    """The layer ``alias`` names (default: ``SISY_CHANNEL_LAYER``); ``CommandError`` if none."""
    from channels.layers import get_channel_layer

    source = "--layer" if alias else "SISY_CHANNEL_LAYER"
    if not alias:
        try:
            alias = sisy_settings.CHANNEL_LAYER
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    layer = get_channel_layer(alias)
    if layer is not None:
        return layer
    configured = sorted(getattr(settings, "CHANNEL_LAYERS", None) or {})
    if not configured:
        raise CommandError("No channel layer is configured: set CHANNEL_LAYERS (see sisy's docs).")
    raise CommandError(
        f"CHANNEL_LAYERS has no {alias!r} entry (named by {source}); "
        f"its layers are: {', '.join(map(repr, configured))}."
    )
