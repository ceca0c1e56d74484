"""System checks: ``manage.py check`` explains a wrong PGBACKGROUND setup."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _need(ok: bool, key: str, value: Any, what: str, code: int) -> list[CheckMessage]:
    if ok:
        return []
    return [
        Error(
            f"PGBACKGROUND[{key!r}] must be {what}; got {value!r}.",
            hint=f"Fix or remove it (default: {DEFAULTS[key]!r}).",
            id=f"pgbackground.E{code:03d}",
        )
    ]


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "PGBACKGROUND", {})
    if not isinstance(raw, dict):
        return [Error("PGBACKGROUND must be a dict.", id="pgbackground.E001")]
    errors: list[CheckMessage] = []
    for key in sorted(set(raw) - set(DEFAULTS)):
        errors.append(
            Error(
                f"Unknown setting PGBACKGROUND[{key!r}].",
                hint="Known settings: " + ", ".join(sorted(DEFAULTS)) + ".",
                id="pgbackground.E002",
            )
        )
    s = {**DEFAULTS, **raw}

    def positive_int(key: str, code: int, minimum: int = 1) -> None:
        v = s[key]
        errors.extend(
            _need(
                isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
                key,
                v,
                f"an integer >= {minimum}",
                code,
            )
        )

    def seconds(key: str, code: int, *, positive: bool) -> None:
        v = s[key]
        ok = _is_number(v) and (v > 0 if positive else v >= 0) and v == v and v != float("inf")
        errors.extend(
            _need(ok, key, v, "a number of seconds " + ("> 0" if positive else ">= 0"), code)
        )

    positive_int("MAX_WORKERS", 3)
    seconds("WORKER_TIMEOUT", 4, positive=False)
    positive_int("DEFAULT_MAX_RESULT_BYTES", 5, minimum=0)
    seconds("HEARTBEAT_INTERVAL", 6, positive=True)
    seconds("WORKER_LOST_AFTER", 7, positive=True)
    seconds("POLL_INTERVAL", 8, positive=True)
    positive_int("FETCH_ROWS", 9)
    positive_int("CHUNK_BYTES", 10, minimum=1024)
    positive_int("MAX_NOTICES", 11, minimum=0)
    for code, key in ((12, "JOB_RETENTION"), (13, "RESULT_RETENTION")):
        v = s[key]
        ok = (
            v is None
            or (isinstance(v, timedelta) and v >= timedelta(0))
            or (_is_number(v) and v >= 0)
        )
        errors.extend(_need(ok, key, v, "a timedelta, a number of seconds >= 0, or None", code))
    if (
        _is_number(s["HEARTBEAT_INTERVAL"])
        and _is_number(s["WORKER_LOST_AFTER"])
        and s["WORKER_LOST_AFTER"] < 2 * s["HEARTBEAT_INTERVAL"]
    ):
        errors.append(
            Error(
                "PGBACKGROUND['WORKER_LOST_AFTER'] must be at least twice HEARTBEAT_INTERVAL,"
                " or live workers would be declared dead.",
                id="pgbackground.E014",
            )
        )
    for code, key in (
        (18, "REDACT_SQL"),
        (19, "STORE_RESULTS"),
        (20, "CARRY_SESSION_SETTINGS"),
        (21, "CACHE_SESSION_SETTINGS"),
    ):
        errors.extend(_need(isinstance(s[key], bool), key, s[key], "True or False", code))
    sync = s["SYNCHRONOUS_COMMIT"]
    if sync not in ("on", "off", "local", "remote_write", "remote_apply"):
        errors.append(
            Error(
                f"PGBACKGROUND['SYNCHRONOUS_COMMIT'] must be one of on, off, local,"
                f" remote_write, remote_apply; got {sync!r}.",
                id="pgbackground.E017",
            )
        )
    alias = s["DATABASE"]
    if not isinstance(alias, str) or alias not in settings.DATABASES:
        errors.append(
            Error(
                f"PGBACKGROUND['DATABASE'] is {alias!r}, which is not a key of DATABASES.",
                hint="Name the database alias whose login should run the jobs' SQL.",
                id="pgbackground.E015",
            )
        )
    for name in {alias if isinstance(alias, str) else "", "default"} & set(settings.DATABASES):
        engine = settings.DATABASES[name].get("ENGINE", "")
        if "postgresql" not in engine:
            errors.append(
                Error(
                    f"Database {name!r} uses {engine!r}; pgbackground needs PostgreSQL.",
                    hint="Use django.db.backends.postgresql (psycopg 3).",
                    id="pgbackground.E016",
                )
            )
    return errors


@register(Tags.security, deploy=True)
def check_jobs_login(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when the login that runs jobs is a superuser: any job could then do anything."""
    from django.db import connections

    from .db import jobs_alias

    alias = jobs_alias()
    if alias not in settings.DATABASES:
        return []
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = session_user")
            row = cursor.fetchone()
    except Exception as exc:
        return [
            Warning(
                f"Could not inspect the jobs' login on {alias!r}: {exc}", id="pgbackground.W002"
            )
        ]
    if row and row[0]:
        return [
            Warning(
                f"Jobs run through database alias {alias!r}, whose login is a superuser.",
                hint="A job's SQL can RESET ROLE back to this login: point"
                " PGBACKGROUND['DATABASE'] at a dedicated low-privilege login.",
                id="pgbackground.W001",
            )
        ]
    return []
