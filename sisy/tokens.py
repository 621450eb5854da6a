"""API tokens: how machines authenticate to sisy's JSON API.

A token stands for one Django user and carries that user's permissions. Only
a SHA-256 digest of it is stored (a token is 32 random bytes, so a slow hash
adds nothing); the token itself is shown once, when it is made, by the
``sisy_token`` command or the admin. Delete the row to revoke it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

#: Every token starts with this, so a leaked one is easy to recognise (and to grep for).
TOKEN_PREFIX = "sisy_"  # noqa: S105 - a marker, not a secret
#: How stale ``last_used_at`` may get before a request writes it again.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class ApiToken(models.Model):
    """A bearer token for the JSON API, acting as ``user``."""

    name = models.CharField(_("name"), max_length=100, help_text=_("What or who uses it."))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="sisy_api_tokens",
        verbose_name=_("user"),
    )
    digest = models.CharField(_("digest"), max_length=64, unique=True, editable=False)
    hint = models.CharField(
        _("starts with"),
        max_length=16,
        editable=False,
        help_text=_("The token's first characters."),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, editable=False)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True, editable=False)

    class Meta:
        app_label = "sisy"
        verbose_name = _("API token")
        verbose_name_plural = _("API tokens")
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def issue(
        cls, user: Any, name: str, *, expires_at: datetime | None = None
    ) -> tuple[ApiToken, str]:
        """Make a token for ``user``; return the row and the token, which is not stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            user=user,
            name=name,
            digest=digest(token),
            hint=token[: len(TOKEN_PREFIX) + 6],
            expires_at=expires_at,
        )
        return row, token

    @classmethod
    def authenticate(cls, token: str) -> Any:
        """The active user ``token`` stands for, or ``None``."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = cls.objects.select_related("user").filter(digest=digest(token)).first()
        now = timezone.now()
        if row is None or not row.user.is_active:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            cls.objects.filter(pk=row.pk).update(last_used_at=now)
        return row.user

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()
