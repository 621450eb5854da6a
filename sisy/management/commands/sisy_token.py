"""``manage.py sisy_token``: make, list and revoke API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from sisy.tokens import ApiToken


class Command(BaseCommand):
    help = "Make, list or revoke tokens for sisy's JSON API ('Authorization: Bearer <token>')."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = actions.add_parser("create", help="Make a token for a user and print it once.")
        create.add_argument("username", help="The user the token acts as (its permissions apply).")
        create.add_argument("--name", default="", help="What or who uses it (default: the user).")
        create.add_argument(
            "--expires-in",
            type=float,
            metavar="DAYS",
            help="Days until it stops working (default: never).",
        )
        actions.add_parser("list", help="List tokens: id, name, user, expiry, last use.")
        revoke = actions.add_parser("revoke", help="Delete tokens by id.")
        revoke.add_argument("ids", nargs="+", type=int, metavar="ID")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _create(self, options: dict[str, Any]) -> None:
        username = options["username"]
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"no user {username!r}") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive: its tokens would not work")
        days = options["expires_in"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in must be a positive number of days")
        expires_at = timezone.now() + timedelta(days=days) if days is not None else None
        row, token = ApiToken.issue(user, options["name"] or username, expires_at=expires_at)
        self.stderr.write(f"Token {row.pk} for {username}; it is shown once, store it now:")
        self.stdout.write(token)

    def _list(self, options: dict[str, Any]) -> None:
        rows = ApiToken.objects.select_related("user")
        if not rows:
            self.stdout.write("No tokens.")
        for row in rows:
            expiry = (
                "never expires"
                if row.expires_at is None
                else f"expires {row.expires_at:%Y-%m-%d %H:%M}"
            )
            if row.expired:
                expiry = "EXPIRED"
            used = (
                f"last used {row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never used"
            )
            user = row.user.get_username()
            self.stdout.write(f"{row.pk}\t{row.hint}…\t{row.name}\tuser {user}\t{expiry}\t{used}")

    def _revoke(self, options: dict[str, Any]) -> None:
        ids = options["ids"]
        found = set(ApiToken.objects.filter(pk__in=ids).values_list("pk", flat=True))
        missing = [i for i in ids if i not in found]
        if missing:
            raise CommandError(f"no token with id {', '.join(map(str, missing))}; nothing revoked")
        ApiToken.objects.filter(pk__in=ids).delete()
        self.stdout.write(f"Revoked {len(ids)} token(s).")
