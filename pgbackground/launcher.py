"""launch() / submit(): validate the arguments, capture the launcher's role and settings, and
insert the job row (autonomously, or in the caller's transaction with ``on_commit=True``)."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

import psycopg
from django.db import DatabaseError, connections, transaction
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from . import sqltext
from .capture import FINGERPRINT, OWN_STATEMENT, cached_capture, remember
from .conf import MAX_LABEL_CHARS, MAX_SQL_CHARS, app_settings
from .db import launcher_connection, launcher_connection_and_hub, models_alias, reply_hub
from .events import QUEUE_CHANNEL
from .exceptions import TooManyJobs
from .handles import Handle
from .prepared import NamedStatement
from .replies import ReplyHub
from .signals import job_launched

# Session settings never carried from the launcher to the job: the pool owns them (encoding,
# identity, connection checks), psycopg needs them as they are to load values (DateStyle,
# IntervalStyle), or they are not settings of a session at all.
NOT_CARRIED = frozenset(
    {
        "application_name",
        "client_encoding",
        "client_connection_check_interval",
        "datestyle",
        "intervalstyle",
        "is_superuser",
        "role",
        "session_authorization",
        "transaction_deferrable",
        "transaction_isolation",
        "transaction_read_only",
    }
)
# The same, written into the statements that read pg_settings (a constant, not a parameter that
# every launch would quote and PostgreSQL parse as an array).
assert all(re.fullmatch(r"[a-z_]+", name) for name in NOT_CARRIED)
_NOT_CARRIED_SQL = "ARRAY[" + ", ".join(f"'{name}'" for name in sorted(NOT_CARRIED)) + "]"
# Settings an override may not name (the role is carried from the launcher, never chosen).
REFUSED_OVERRIDES = NOT_CARRIED

_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$")
MAX_GUC_VALUE_CHARS = 8192

# What a launch carries from the caller's session: (role, gucs, fingerprint), read by one
# SELECT (on its own, or as the CTE ``s`` of the launch statement). Three ways:
# - "scan": all of pg_settings (source 'session', plus the effective TimeZone);
# - "known": the settings captured before (%(carried)s, see capture.py), unless the fingerprint
#   of the commonly changed settings moved since (changed by a path the watch does not see):
#   then pg_settings after all. Role and TimeZone are read in any case;
# - "role": CARRY_SESSION_SETTINGS off: the role and the TimeZone only.
_SESSION_SCAN = (
    "SELECT coalesce(jsonb_object_agg(name, setting)"
    f" FILTER (WHERE lower(name) <> ALL({_NOT_CARRIED_SQL})), '{{}}')"
    " FROM pg_settings WHERE source = 'session'"
)
_TIME_ZONE = "jsonb_build_object('TimeZone', current_setting('TimeZone'))"
_CAPTURE_SELECT = {
    "scan": f"SELECT current_user::text AS role, ({_SESSION_SCAN}) || {_TIME_ZONE} AS gucs,"
    f" {FINGERPRINT} AS fp",
    "known": f"SELECT current_user::text AS role, CASE WHEN {FINGERPRINT} = %(fingerprint)s"
    f" THEN %(carried)s::jsonb ELSE ({_SESSION_SCAN}) END || {_TIME_ZONE} AS gucs,"
    f" {FINGERPRINT} AS fp",
    "role": f"SELECT current_user::text AS role, {_TIME_ZONE} AS gucs, NULL::text AS fp",
}

_INSERT_COLUMNS = (
    "cookie, sql, label, owner_id, role, gucs, timeout, max_result_bytes, fire_and_forget, notices,"
    " reply_pid"
)


def new_cookie() -> int:
    """A random signed 64-bit cookie, never 0."""
    while True:
        cookie = secrets.randbits(64) - (1 << 63)
        if cookie:
            return cookie


# --- argument validation -----------------------------------------------------------------------


def validate_sql(sql: object) -> str:
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, not {type(sql).__name__}")
    if "\x00" in sql:
        raise ValueError(
            "sql contains a NUL character, which PostgreSQL cannot accept (SQLSTATE 22021)"
        )
    if len(sql) > MAX_SQL_CHARS:
        raise ValueError(f"sql is longer than {MAX_SQL_CHARS} characters")
    if sqltext.is_blank(sql):
        raise ValueError("sql is empty: it holds no statement (only white space or comments)")
    return sql


def validate_label(label: object) -> str:
    if label is None:
        return ""
    if not isinstance(label, str):
        raise TypeError(f"label must be a str or None, not {type(label).__name__}")
    if "\x00" in label:
        raise ValueError("label contains a NUL character")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label is longer than {MAX_LABEL_CHARS} characters")
    return label


def validate_seconds(value: object, name: str, *, cap: float | None = None) -> float | None:
    """None or a finite, non-negative number of seconds (bools refused); capped at ``cap``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    if cap is not None:
        seconds = min(seconds, cap)
    return seconds


def validate_max_result_bytes(value: object) -> int:
    if value is None:
        return int(app_settings.DEFAULT_MAX_RESULT_BYTES)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_result_bytes must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"max_result_bytes must be >= 0, not {value}")
    if value > (1 << 63) - 1:
        raise ValueError("max_result_bytes must fit in 64 bits (at most 2**63 - 1)")
    return value


def validate_owner(owner: object) -> int | None:
    """The owner's primary key: owner must be None or a saved user."""
    if owner is None:
        return None
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if not isinstance(owner, user_model):
        raise TypeError(
            f"owner must be a {user_model.__name__} instance or None, not {type(owner).__name__}"
        )
    if owner.pk is None:
        raise ValueError("owner must be a saved user (it has no primary key)")
    return int(owner.pk)


def _guc_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return str(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"setting {name!r}: value contains a NUL character")
        if len(value) > MAX_GUC_VALUE_CHARS:
            raise ValueError(
                f"setting {name!r}: value is longer than {MAX_GUC_VALUE_CHARS} characters"
            )
        return value
    raise TypeError(
        f"setting {name!r}: value must be a str, int, float or bool, not {type(value).__name__}"
    )


def validate_gucs(gucs: object) -> dict[str, str]:
    """Normalise ``gucs=`` (names checked for form and policy here; for existence by PostgreSQL)."""
    if gucs is None:
        return {}
    if not isinstance(gucs, Mapping):
        raise TypeError(
            f"gucs must be a mapping of setting name to value, not {type(gucs).__name__}"
        )
    result: dict[str, str] = {}
    for name, value in gucs.items():
        if not isinstance(name, str):
            raise TypeError(f"setting names must be str, not {type(name).__name__}")
        if len(name) > 200 or not _GUC_NAME.match(name):
            raise ValueError(f"invalid setting name {name!r}")
        if name.lower() in REFUSED_OVERRIDES:
            raise ValueError(
                f"setting {name!r} cannot be overridden: the pool controls it"
                + (
                    " (the job runs as the launcher's current role)"
                    if "role" in name.lower() or "authorization" in name.lower()
                    else ""
                )
            )
        result[name] = _guc_value(name, value)
    return result


def check_gucs_with_server(conn: psycopg.Connection[Any], role: str, gucs: dict[str, str]) -> None:
    """Ask PostgreSQL whether the overrides are valid settings for ``role`` (nothing persists).

    Unknown names (other than custom ``prefix.name`` settings) and invalid values raise ValueError
    with PostgreSQL's message and SQLSTATE; no job row is created.
    """
    calls = pgsql.SQL(", ").join(
        pgsql.SQL("set_config({}, {}, true)").format(pgsql.Literal(k), pgsql.Literal(v))
        for k, v in gucs.items()
    )
    probe = pgsql.SQL("BEGIN; SELECT set_config('role', {}, true); SELECT {}; ROLLBACK").format(
        pgsql.Literal(role), calls
    )
    try:
        conn.execute(probe)
    except psycopg.Error as exc:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        diag = exc.diag
        raise ValueError(
            f"invalid gucs: {diag.message_primary or exc} (SQLSTATE {exc.sqlstate})"
        ) from None


# --- capture and insert ------------------------------------------------------------------------


def capture_mode(wrapper: Any, params: dict[str, Any]) -> str:
    """How a launch on ``wrapper`` reads the caller's settings ("scan", "known" or "role"; see
    _CAPTURE_SELECT), with the parameters that needs added to ``params``."""
    params["carried"], params["fingerprint"] = "{}", None
    if not app_settings.CARRY_SESSION_SETTINGS:
        return "role"
    known = cached_capture(wrapper)
    if known is None:
        return "scan"
    params["carried"], params["fingerprint"] = known.settings_json, known.fingerprint
    return "known"


def keep_capture(wrapper: Any, mode: str, params: dict[str, Any], gucs: Any, fp: Any) -> None:
    """Keep what a "scan" read, or a "known" read that had to scan (its fingerprint moved)."""
    if mode == "scan" or (mode == "known" and fp != params["fingerprint"]):
        settings = json.loads(gucs) if isinstance(gucs, str) else dict(gucs or {})
        settings.pop("TimeZone", None)  # read by every launch
        remember(wrapper, settings, str(fp))


def capture_session(alias: str) -> tuple[str, dict[str, str]]:
    """The caller's current role and its session-level settings (pg_settings source 'session'),
    plus its effective TimeZone: timestamps a job prints read as the launcher's would."""
    wrapper = connections[alias]
    params: dict[str, Any] = {}
    mode = capture_mode(wrapper, params)
    with wrapper.cursor() as cursor:
        cursor.execute(
            f"SELECT s.role, s.gucs::text, s.fp FROM ({_CAPTURE_SELECT[mode]}) s", params
        )
        role, gucs, fp = cursor.fetchone()
    keep_capture(wrapper, mode, params, gucs, fp)
    return role, dict(json.loads(gucs))


def _insert_sql(*, with_limit: bool, capture: str | None, own_commit: bool = False) -> str:
    """INSERT the job and NOTIFY the pools, returning the id and the settings carried.

    ``capture``: read the role and settings of the connection it runs on (a key of
    _CAPTURE_SELECT); None: they are the parameters ``%(role)s`` and ``%(gucs)s``. With
    ``with_limit``, insert nothing if the owner is at MAX_WORKERS; with ``own_commit`` (an
    autocommit statement on the caller's connection), commit with
    PGBACKGROUND["SYNCHRONOUS_COMMIT"] (set for this transaction only, after the capture).
    """
    conditions = []
    if with_limit:
        conditions.append(
            "(SELECT count(*) FROM pgbackground_job WHERE owner_id = %(owner)s"
            " AND state IN ('queued', 'running')) < %(max)s"
        )
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    cte = f"s AS ({_CAPTURE_SELECT[capture]}), " if capture else ""
    role, gucs = ("s.role", "s.gucs") if capture else ("%(role)s", "%(gucs)s")
    return (
        f"{OWN_STATEMENT}WITH {cte}"
        f"j AS (INSERT INTO pgbackground_job ({_INSERT_COLUMNS})"
        " SELECT %(cookie)s, %(sql)s, %(label)s, %(owner)s,"
        f" {role}, {gucs}, %(timeout)s, %(max_result_bytes)s, %(ff)s, '[]'::jsonb,"
        " %(reply_pid)s" + (" FROM s" if capture else "") + f"{where} RETURNING id, gucs)"
        f" SELECT j.id, j.gucs::text, {'s.fp' if capture else 'NULL'},"
        f" pg_notify('{QUEUE_CHANNEL}', j.id::text)"
        + (", set_config('synchronous_commit', %(sync)s, true)" if own_commit else "")
        + (" FROM j, s" if capture else " FROM j")
    )


# The launch statement on the caller's autocommit connection, prepared by name on it: Django
# binds parameters client-side and does not prepare, so PostgreSQL would parse and plan it on
# every launch (a third of its cost).
_LAUNCH_TYPES = {
    "cookie": "bigint",
    "sql": "text",
    "label": "text",
    "owner": "integer",
    "timeout": "double precision",
    "max_result_bytes": "bigint",
    "ff": "boolean",
    "carried": "jsonb",
    "fingerprint": "text",
    "sync": "text",
    "reply_pid": "integer",
}
_INLINE_INSERT = {
    capture: NamedStatement(
        "pgbackground_launch",
        _insert_sql(with_limit=False, capture=capture, own_commit=True),
        _LAUNCH_TYPES,
    )
    for capture in _CAPTURE_SELECT
}

_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('pgbackground.owner:' || %s, 0))"

# Errors on the caller's connection after which launch() takes the two-connection path instead:
# its current role may not insert jobs (42501), or its search_path hides the table (42P01).
_RETRY_ELSEWHERE = frozenset({"42501", "42P01"})


def _insert(cursor: Any, params: dict[str, Any], *, capture: str | None) -> int | None:
    """Run the insert on a DB-API cursor (psycopg's or Django's) that is in a transaction if
    there is an owner limit to check; the new id, or None when the owner is at the limit."""
    owner = params["owner"]
    if owner is not None:
        cursor.execute(_LOCK_SQL, [owner])
    cursor.execute(_insert_sql(with_limit=owner is not None, capture=capture), params)
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def _insert_in_transaction(alias: str, params: dict[str, Any], *, capture: bool) -> int | None:
    """Insert in the caller's transaction (``on_commit=True``), reading the role and settings
    there with ``capture`` (else they are in ``params``)."""
    wrapper = connections[alias]
    mode = capture_mode(wrapper, params) if capture else None
    with transaction.atomic(using=alias), wrapper.cursor() as cursor:
        return _insert(cursor, params, capture=mode)


def _insert_autonomously(params: dict[str, Any]) -> int | None:
    """Insert on the launcher's own connection (commits whatever the caller's transaction
    does); one round trip, the owner check included (pipeline)."""
    conn = launcher_connection()
    if params["owner"] is None:
        return _insert(conn.cursor(), params, capture=None)
    cursor = conn.cursor()
    with conn.pipeline(), conn.transaction():
        cursor.execute(_LOCK_SQL, [params["owner"]])
        cursor.execute(_insert_sql(with_limit=True, capture=None), params)
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def _insert_inline(alias: str, params: dict[str, Any]) -> int | bool | None:
    """Capture and insert in one statement on the caller's connection, when it is in autocommit
    mode (the insert then commits on its own, as launch() requires). False: not possible here."""
    wrapper = connections[alias]
    if params["owner"] is not None or wrapper.in_atomic_block or not wrapper.get_autocommit():
        return False
    mode = capture_mode(wrapper, params)
    try:
        row = _INLINE_INSERT[mode].execute(alias, params)
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) in _RETRY_ELSEWHERE:
            return False
        raise
    if row is None:
        return None
    keep_capture(wrapper, mode, params, row[1], row[2])
    return int(row[0])


def _expect_reply(hub: ReplyHub, job_id: int, cookie: int, on_commit_of: str | None) -> None:
    """Tell the process's reply hub to expect the job's end, once the job exists for sure: a
    job launched with on_commit is expected only if the caller's transaction commits, and only
    if the process still has that hub then."""

    def expect_on_commit() -> None:
        if reply_hub() is hub:
            hub.expect(job_id, cookie)

    if on_commit_of is None:
        hub.expect(job_id, cookie)
    else:
        transaction.on_commit(expect_on_commit, using=on_commit_of)


def launch(
    sql: str,
    *,
    label: str | None = None,
    timeout: float | None = None,
    gucs: Mapping[str, object] | None = None,
    owner: Any = None,
    max_result_bytes: int | None = None,
    on_commit: bool = False,
    fire_and_forget: bool = False,
) -> Handle:
    """Queue ``sql`` to run in the background; see :func:`pgbackground.launch`."""
    sql = validate_sql(sql)
    label = validate_label(label)
    timeout_s = validate_seconds(timeout, "timeout")
    if timeout_s is None or timeout_s == 0:
        default_timeout = float(app_settings.WORKER_TIMEOUT or 0)
        timeout_s = default_timeout if (timeout_s is None and default_timeout > 0) else None
    limit_bytes = validate_max_result_bytes(max_result_bytes)
    owner_pk = validate_owner(owner)
    overrides = validate_gucs(gucs)
    if not isinstance(on_commit, bool):
        raise TypeError("on_commit must be a bool")

    alias = models_alias()
    cookie = new_cookie()
    # The process's reply connection, if it has one, hears of the job's end (replies.py).
    hub = reply_hub()
    params: dict[str, Any] = {
        "cookie": cookie,
        "sql": sql,
        "label": label,
        "owner": owner_pk,
        "max": int(app_settings.MAX_WORKERS),
        "timeout": timeout_s,
        "max_result_bytes": limit_bytes,
        "ff": fire_and_forget or not app_settings.STORE_RESULTS,
        "sync": str(app_settings.SYNCHRONOUS_COMMIT),
        "reply_pid": None if hub is None else hub.pid,
    }
    job_id: int | bool | None = False
    if not overrides:
        # The role and settings are read by the inserting statement itself when it can run on
        # the caller's connection: in its transaction (on_commit), or when it is in autocommit.
        if on_commit:
            job_id = _insert_in_transaction(alias, params, capture=True)
        else:
            job_id = _insert_inline(alias, params)
    if job_id is False:
        if hub is None:
            _, hub = launcher_connection_and_hub()  # needed now anyway, and opens the hub
            params["reply_pid"] = hub.pid
        role, settings = capture_session(alias)
        if overrides:
            check_gucs_with_server(launcher_connection(), role, overrides)
            settings.update(overrides)
        params["role"], params["gucs"] = role, Jsonb(settings)
        if on_commit:
            job_id = _insert_in_transaction(alias, params, capture=False)
        else:
            job_id = _insert_autonomously(params)
    if job_id is None:
        raise TooManyJobs(
            f"owner already has {params['max']} queued or running jobs (MAX_WORKERS);"
            " wait for one to finish or cancel one (SQLSTATE 53400)"
        )
    assert isinstance(job_id, int)
    if hub is not None:
        _expect_reply(hub, job_id, cookie, alias if on_commit else None)
    handle = Handle(job_id, cookie)
    job_launched.send(
        sender=Handle, handle=handle, label=label, owner_id=owner_pk, on_commit=on_commit
    )
    return handle
