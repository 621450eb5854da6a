"""Settings of sisy's demo project.

Two environment variables choose the services (``run.py`` sets ``REDIS_URL``
to the Redis it picked):

- ``REDIS_URL``: the Redis of the channel layer and of worker heartbeats,
  ``redis://127.0.0.1:6379/0`` when unset.
- ``DATABASE_URL``: ``postgres://user:password@host:port/name`` for PostgreSQL
  (needs ``psycopg``); unset, the demo uses SQLite in ``var/demo.sqlite3``.

``SISY_HEARTBEAT_FREQUENCY`` (seconds between two clock ticks) is 1 unless that
environment variable says otherwise: the demo's Tasks run every few seconds,
and a Task fires at most once per tick.

The web side (``run.py --serve``): the admin, sisy's JSON API under ``/sisy/``
and the demo's job page at ``/``, served by Daphne through ``manage.py
runserver`` when the ``daphne`` package is installed (Channels 4 moved its
ASGI ``runserver`` there), by Django's own ``runserver`` otherwise.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sisy-demo-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "sisy",
    "mediaapp",
    "scheduleapp",
]
if importlib.util.find_spec("daphne") is not None:
    # Daphne's runserver (ASGI) replaces Django's: it must come before staticfiles.
    INSTALLED_APPS.insert(0, "daphne")
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "demoproject.urls"
STATIC_URL = "/static/"
#: The job page asks for a login; the admin's login page is the one there is.
LOGIN_URL = "admin:login"
ASGI_APPLICATION = "demoproject.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database_from_url(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for ``postgres://user:password@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(
            f"DATABASE_URL must start with postgres:// or postgresql://, not {parts.scheme!r}://"
        )
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ImproperlyConfigured("DATABASE_URL names no database: postgres://.../<name>")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "demo.sqlite3",
            "OPTIONS": {
                # The worker and run.py write to one file: wait for each other's locks.
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "sisy.layers.RedisChannelLayer",
        "CONFIG": {
            # redis-py >= 8 times reads out after 5 s by default, which breaks the
            # layer's blocking pop: give the socket more than the pop's 5 s.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
            # Keep the demo's keys apart from anything else in a shared Redis.
            "prefix": "sisy-demo",
        },
    }
}

SISY_WORKER_KEY_PREFIX = "sisy-demo:worker:"
SISY_WORKER_HEARTBEAT_INTERVAL = 2
SISY_WORKER_HEARTBEAT_TTL = 6
#: The clock's period. sisy's default is 60 s; the demo's schedules have a seconds field.
SISY_HEARTBEAT_FREQUENCY = float(os.environ.get("SISY_HEARTBEAT_FREQUENCY", "1"))

#: Where the demo's modules read input files from (paths in job data are relative to it).
DEMO_FILES_ROOT = BASE_DIR
#: Where the thumbnail and ffmpeg modules write their files.
MEDIA_ROOT = VAR_DIR / "media"
#: The programs the media modules run: a name looked up on PATH, or a path.
DEMO_FFMPEG = os.environ.get("DEMO_FFMPEG", "ffmpeg")
DEMO_FFPROBE = os.environ.get("DEMO_FFPROBE", "ffprobe")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {
        "sisy": {"handlers": ["console"], "level": os.environ.get("SISY_LOG_LEVEL", "INFO")},
        # The clock's pass logs a line for each tick that fires a Task: every second or so
        # in the demo. SISY_CLOCK_LOG_LEVEL=INFO shows them.
        "sisy.clock": {"level": os.environ.get("SISY_CLOCK_LOG_LEVEL", "WARNING")},
        # The web server logs every request; the job page polls twice a second. Errors
        # (4xx, 5xx) are logged at WARNING and above: DEMO_HTTP_LOG_LEVEL=INFO shows them all.
        "django.channels.server": {"level": os.environ.get("DEMO_HTTP_LOG_LEVEL", "WARNING")},
        "django.server": {"level": os.environ.get("DEMO_HTTP_LOG_LEVEL", "WARNING")},
    },
}
