"""The launcher's session settings, read from ``pg_settings`` once per connection.

Finding a session's own settings (``source = 'session'``) means PostgreSQL building all ~350
rows of ``pg_settings``: about 0.4 ms of server CPU, most of a launch. A session's settings only
change when it runs a statement that changes them, and the statements a Django application
runs pass through its connection's execute wrappers. So the capture is kept per connection and
thrown away, before it runs, by any statement that may change a setting (see
:func:`may_change_settings`): the next launch reads ``pg_settings`` again.

Every launch also reads the role, the TimeZone and the settings of WATCHED_SETTINGS (cheap
``current_setting()`` calls): a change to one of those made where the watch cannot see it still
makes the launch read ``pg_settings`` again. What stays unseen, and
``PGBACKGROUND["CACHE_SESSION_SETTINGS"] = False`` covers (a fresh read on every launch): another
setting changed on the raw psycopg connection (``connection.connection``), or by
``set_config(..., false)`` inside a function that a statement merely calls.

A capture is only kept when it was taken outside a transaction: a setting changed in a
transaction (``SET LOCAL``, or ``SET`` rolled back) would otherwise outlive it here.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from .conf import app_settings

# Leading comments, as a statement may carry them (Django's own are none; ORMs add some).
_COMMENTS = r"(?:/\*.*?\*/\s*|--[^\n]*(?:\n|$)\s*)*"
# A statement (or a PL/pgSQL one inside DO) that sets, resets or discards session state, a
# set_config() call anywhere, or a DO block or procedure call (their bodies are not read).
_MAY_CHANGE = re.compile(
    r"(?:^|;|\$\$|\b(?:begin|then|else|loop)\b)\s*" + _COMMENTS + r"(?:set|reset|discard)\b"
    r"|\bset_config\s*\("
    r"|(?:^|;)\s*" + _COMMENTS + r"(?:do|call)\b",
    re.IGNORECASE | re.DOTALL,
)
# pgbackground's own statements (the launch statement sets synchronous_commit for its own
# transaction only) start with this comment, or prepare/execute statements named so.
OWN_STATEMENT = "/* pgbackground */ "
_OWN_PREFIXES = (OWN_STATEMENT, "PREPARE pgbackground_", "EXECUTE pgbackground_")


def may_change_settings(sql: object) -> bool:
    """Could running ``sql`` change a session setting or the current role? (False only when
    surely not: an ``UPDATE ... SET`` is not a ``SET``.)"""
    if not isinstance(sql, str):
        return True  # a psycopg sql.Composed or bytes: do not guess
    if sql.startswith(_OWN_PREFIXES):
        return False
    return _MAY_CHANGE.search(sql) is not None


# Settings often changed by code that bypasses Django's cursors (a multi-tenant search_path set
# on the raw connection, timeouts): their values, read by every launch (a few current_setting()
# calls), are the fingerprint of a capture; when it moved, the launch reads pg_settings again.
WATCHED_SETTINGS = (
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "maintenance_work_mem",
)
FINGERPRINT = "concat_ws(chr(1), {})".format(
    ", ".join(f"current_setting('{name}')" for name in WATCHED_SETTINGS)
)


class Capture(NamedTuple):
    settings: dict[str, str]  # pg_settings source 'session', minus what is never carried
    fingerprint: str  # FINGERPRINT when they were read
    settings_json: str  # ``settings`` as the JSON every launch passes (encoded once)


# The capture, per psycopg connection (a reconnect starts without one).
_captures: weakref.WeakKeyDictionary[Any, Capture] = weakref.WeakKeyDictionary()


def _watch(
    execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Django execute wrapper: forget the capture before a statement that may change it."""
    if may_change_settings(sql):
        raw = context["connection"].connection
        if raw is not None:
            _captures.pop(raw, None)
    return execute(sql, params, many, context)


def is_settings_watch(wrapper_function: object) -> bool:
    """Is this Django execute wrapper the watch installed by :func:`remember`?"""
    return wrapper_function is _watch


def cached_capture(wrapper: Any) -> Capture | None:
    """The settings captured on ``wrapper``'s current connection, if still valid."""
    if not app_settings.CACHE_SESSION_SETTINGS or wrapper.connection is None:
        return None
    if _watch not in wrapper.execute_wrappers:
        return None  # not watched (yet): nothing seen since a capture can be trusted
    return _captures.get(wrapper.connection)


def remember(wrapper: Any, settings: dict[str, str], fingerprint: str) -> None:
    """Keep ``settings`` (and the FINGERPRINT read with them), just captured on ``wrapper``'s
    connection outside a transaction, and watch the connection from now on."""
    if not app_settings.CACHE_SESSION_SETTINGS or wrapper.connection is None:
        return
    if wrapper.in_atomic_block or not wrapper.get_autocommit():
        return
    if _watch not in wrapper.execute_wrappers:
        # First, i.e. outermost: Django's execute_wrapper() context manager pops the last one.
        wrapper.execute_wrappers.insert(0, _watch)
    _captures[wrapper.connection] = Capture(dict(settings), fingerprint, json.dumps(settings))


def forget(wrapper: Any) -> None:
    """Drop the capture of ``wrapper``'s connection (the next launch reads pg_settings)."""
    if wrapper.connection is not None:
        _captures.pop(wrapper.connection, None)
