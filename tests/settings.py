"""Settings for sisy's test suite.

``SISY_TEST_DATABASE`` chooses the database: ``sqlite`` (default) or
``postgres`` (``SISY_TEST_PG_*`` for the server, trust auth on 127.0.0.1 by
default). The Redis URL is filled in by tests/conftest.py, which starts its own
``redis-server`` unless ``SISY_TEST_REDIS_URL`` names one.
"""

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "sisy-tests-only"
DEBUG = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "channels",
    "sisy",
    "tests.testapp",
    "tests.migrationapp",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
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

if os.environ.get("SISY_TEST_DATABASE", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            # Worker processes started by the tests connect to the test database itself.
            "NAME": os.environ.get("SISY_TEST_DB_NAME", "postgres"),
            "USER": os.environ.get("SISY_TEST_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("SISY_TEST_PG_PASSWORD", ""),
            "HOST": os.environ.get("SISY_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("SISY_TEST_PG_PORT", "5432"),
            "TEST": {"NAME": os.environ.get("SISY_TEST_DB_NAME", f"test_sisy_{os.getpid()}")},
        }
    }
    if os.environ.get("SISY_TEST_PG_SERVER_SIDE_BINDING") == "1":
        # psycopg's server-side binding, with statements prepared on their
        # second run: what docs/topics/deployment.rst suggests for busy workers
        # (tox's *-prepared environments).
        DATABASES["default"]["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 2}
else:
    # A file, not :memory:, so that worker processes share it with the tests.
    _db = os.environ.get("SISY_TEST_DB_NAME") or str(
        Path(os.environ.get("TMPDIR", "/tmp")) / f"sisy-test-{os.getpid()}.sqlite3"
    )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _db,
            "TEST": {"NAME": _db},
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.environ.get("SISY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "sisy.layers.RedisChannelLayer",
        # redis-py >= 8 times reads out after 5 s by default, which breaks the
        # layer's blocking pop: give the socket more than the pop's 5 s.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}]},
    }
}
# Knobs for the fault-injection suite (tests/chaos); unset, the layer is as above.
CHANNEL_LAYERS["default"]["BACKEND"] = os.environ.get(
    "SISY_TEST_LAYER_BACKEND", CHANNEL_LAYERS["default"]["BACKEND"]
)
if os.environ.get("SISY_TEST_REDIS_URL_2"):  # a second shard
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"].append(
        {"address": os.environ["SISY_TEST_REDIS_URL_2"], "socket_timeout": 10}
    )
if os.environ.get("SISY_TEST_LAYER_EXPIRY"):
    CHANNEL_LAYERS["default"]["CONFIG"]["expiry"] = int(os.environ["SISY_TEST_LAYER_EXPIRY"])
if os.environ.get("SISY_TEST_LAYER_CAPACITY"):
    CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = int(os.environ["SISY_TEST_LAYER_CAPACITY"])

# Django >= 6.0 runs @task functions (tests/testapp/django_tasks.py) on sisy's
# workers; Django 5.2 ignores the setting.
TASKS = {
    "default": {
        "BACKEND": "sisy.backends.ChannelsBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"CHANNELS": {"emails": "sisy.emails"}},
    }
}

SISY_HEARTBEAT_FREQUENCY = float(os.environ.get("SISY_TEST_HEARTBEAT_FREQUENCY", "60"))
SISY_WORKER_HEARTBEAT_INTERVAL = 0.5
SISY_WORKER_HEARTBEAT_TTL = 3
SISY_JOB_LEASE = float(os.environ.get("SISY_TEST_JOB_LEASE", "5"))
SISY_REDISPATCH_AFTER = 0
SISY_WORKER_SHUTDOWN_GRACE = float(os.environ.get("SISY_TEST_SHUTDOWN_GRACE", "25"))
SISY_TIME_LIMIT_GRACE = float(os.environ.get("SISY_TEST_TIME_LIMIT_GRACE", "5"))
SISY_MODULES = ["tests.testapp.policy_modules"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "timed": {
            "format": "%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s"
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "timed"}},
    "loggers": {
        "sisy": {"handlers": ["console"], "level": os.environ.get("SISY_LOG_LEVEL", "WARNING")}
    },
}
