"""Settings of the benchmark's small Django project, configured by bench/compare.py.

``BENCH_REDIS_URL`` is the benchmark's private Redis (channel layer and worker
heartbeats). ``BENCH_DB`` is ``sqlite`` (the file ``BENCH_SQLITE_PATH``, in WAL
mode as sisy's docs advise) or ``postgres`` (database ``BENCH_PG_NAME`` on
127.0.0.1:5432, user ``postgres``, trust auth). Everything else is sisy's
defaults.
"""

from __future__ import annotations

import os

SECRET_KEY = "sisy-bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "channels",
    "sisy",
    "benchapp",
]

if os.environ.get("BENCH_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("BENCH_PG_NAME", "sisy_bench"),
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            # bench/drain_ab.py's "prepared" variant (docs/topics/deployment.rst)
            "OPTIONS": {"server_side_binding": True, "prepare_threshold": 2}
            if os.environ.get("BENCH_PG_PREPARED") == "1"
            else {},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_SQLITE_PATH", "/tmp/sisy-bench.sqlite3"),
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "sisy.layers.RedisChannelLayer",
        # redis-py >= 8 times reads out after 5 s by default, which breaks the
        # layer's blocking pop: give the socket more than the pop's 5 s.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}]},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sisy": {"handlers": ["console"], "level": "WARNING"}},
}
