"""Settings of the demo project.

Everything that differs between machines comes from the environment (django-environ):
``DATABASE_URL``, ``SECRET_KEY``, ``DEBUG``, ``ALLOWED_HOSTS`` and the ``PGBACKGROUND_*`` knobs.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="pgbackground-demo-insecure-key-change-me")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgbackground",
    # The demo's sales table, seed_demo command and report pages (live progress).
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
ASGI_APPLICATION = "demo.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/pgbackground"),
}
# Optional: a separate (low-privilege) login for the jobs' SQL, e.g.
# JOBS_DATABASE_URL=postgres://pgb_runner@127.0.0.1:5432/pgbackground
if env.str("JOBS_DATABASE_URL", default=""):
    DATABASES["jobs"] = env.db("JOBS_DATABASE_URL")
    DATABASES["jobs"]["TEST"] = {"MIRROR": "default"}
# A fixed test database name keeps pytest-django and ChannelsLiveServerTestCase in agreement.
DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str(
    "TEST_DATABASE_NAME", default="test_pgbackground"
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

LOGIN_URL = "admin:login"

PGBACKGROUND = {
    "MAX_WORKERS": env.int("PGBACKGROUND_MAX_WORKERS", default=16),
    "WORKER_TIMEOUT": env.float("PGBACKGROUND_WORKER_TIMEOUT", default=0),
    "HEARTBEAT_INTERVAL": env.float("PGBACKGROUND_HEARTBEAT_INTERVAL", default=2.0),
    "WORKER_LOST_AFTER": env.float("PGBACKGROUND_WORKER_LOST_AFTER", default=10.0),
    "POLL_INTERVAL": env.float("PGBACKGROUND_POLL_INTERVAL", default=5.0),
    "DATABASE": "jobs" if "jobs" in DATABASES else "default",
    "REDACT_SQL": env.bool("PGBACKGROUND_REDACT_SQL", default=False),
    "STORE_RESULTS": env.bool("PGBACKGROUND_STORE_RESULTS", default=True),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "pgbackground": {
            "handlers": ["console"],
            "level": env.str("PGBACKGROUND_LOG_LEVEL", default="INFO"),
        },
        # One line per finished job; WARNING keeps the failed ones only (unset: as above).
        "pgbackground.jobs": {
            "level": env.str("PGBACKGROUND_JOBS_LOG_LEVEL", default="NOTSET"),
        },
    },
}
