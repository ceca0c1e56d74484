"""The ``PGBACKGROUND`` settings namespace and its defaults (validated by :mod:`.checks`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Queued + running jobs one owner may have at once (pg_background: max_workers per session).
    "MAX_WORKERS": 16,
    # Seconds a job may run; 0 = no limit. ``launch(timeout=...)`` overrides it per job.
    "WORKER_TIMEOUT": 0,
    # Bytes of result one job may store; larger results fail the job with SQLSTATE 54000.
    "DEFAULT_MAX_RESULT_BYTES": 256 * 1024 * 1024,
    # Django database alias whose login runs the jobs' SQL (point it at a low-privilege login).
    "DATABASE": "default",
    # Seconds between worker heartbeats; a worker silent for WORKER_LOST_AFTER seconds is dead.
    "HEARTBEAT_INTERVAL": 2.0,
    "WORKER_LOST_AFTER": 10.0,
    # Seconds between queue polls when no NOTIFY arrives (a fallback, not the normal wake-up).
    "POLL_INTERVAL": 5.0,
    # Finished jobs older than this are purged with their results by ``pgbackground purge``.
    "JOB_RETENTION": timedelta(days=30),
    # Unconsumed results of finished jobs are dropped after this (the job row stays).
    "RESULT_RETENTION": timedelta(days=7),
    # Rows the worker asks PostgreSQL for at a time, and bytes it stores per result chunk.
    "FETCH_ROWS": 2000,
    "CHUNK_BYTES": 1024 * 1024,
    # synchronous_commit of pgbackground's own bookkeeping writes (launch, claim, outcome). "off"
    # saves a WAL flush per write; a PostgreSQL *crash* (not a clean restart) may then lose the
    # last fraction of a second of them. The jobs' own SQL always commits as the server says.
    "SYNCHRONOUS_COMMIT": "off",
    # Carry the launcher's session-level settings (pg_settings source 'session') to its jobs,
    # like pg_background. False: only its role and TimeZone (plus gucs=) are carried.
    "CARRY_SESSION_SETTINGS": True,
    # Read those settings once per connection, and again only after a statement run through
    # Django that may change them (SET, RESET, DISCARD, set_config(), DO, CALL); False: on every
    # launch. See pgbackground/capture.py for what the watch cannot see.
    "CACHE_SESSION_SETTINGS": True,
    # Replace a job's SQL text by a placeholder once it has run (SQL can hold secrets).
    "REDACT_SQL": False,
    # Keep result rows for result(); off: every job is fire-and-forget (state, errors and
    # notices are still kept).
    "STORE_RESULTS": True,
    # Notices kept per job (VACUUM VERBOSE is chatty); the rest are counted, not kept.
    "MAX_NOTICES": 1000,
}

# Longest progress message kept, in characters (longer ones are cut at a character boundary).
PROGRESS_MESSAGE_MAX_CHARS = 500
# ``cancel(grace=...)`` values above this many seconds are capped.
MAX_CANCEL_GRACE = 3600.0
# Longest SQL text accepted by launch(), in characters.
MAX_SQL_CHARS = 64 * 1024 * 1024
# Longest label, in characters (the model field's max_length).
MAX_LABEL_CHARS = 200


class Settings:
    """``settings.PGBACKGROUND`` merged over DEFAULTS. Read once and kept (a launch reads about
    ten of them, and each read of Django's settings object costs a few microseconds); read again
    after ``setting_changed`` (``override_settings``, pytest-django's ``settings`` fixture)."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"unknown pgbackground setting {name!r}")
        values = self.__dict__.get("_values")
        if values is None:
            user = getattr(django_settings, "PGBACKGROUND", None) or {}
            values = {key: user.get(key, default) for key, default in DEFAULTS.items()}
            self.__dict__["_values"] = values
        return values[name]

    def reload(self) -> None:
        """Forget the values read (the next access reads ``settings.PGBACKGROUND`` again)."""
        self.__dict__.pop("_values", None)

    def seconds(self, name: str) -> float:
        """A duration setting as seconds, whether given as a number or a timedelta."""
        value = getattr(self, name)
        if isinstance(value, timedelta):
            return value.total_seconds()
        return float(value)


app_settings = Settings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "PGBACKGROUND":
        app_settings.reload()


setting_changed.connect(_reload, dispatch_uid="pgbackground.conf.reload")
