"""psycopg connections built from Django's database settings.

The app needs connections Django does not give it: the launcher's *autonomous* connection (a
job row must commit even when the caller's transaction rolls back, and ``wait()`` LISTENs on
it), and the pool's control and job connections.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, router

from .conf import app_settings

if TYPE_CHECKING:
    from .replies import ReplyHub

# Keys of Django's connection params that are Django's, not libpq's.
_NOT_LIBPQ = {"cursor_factory", "context", "prepare_threshold", "server_side_binding"}


def models_alias() -> str:
    """The database alias that holds pgbackground's tables."""
    if not router.routers:  # no DATABASE_ROUTERS: Django writes every model to the default
        return DEFAULT_DB_ALIAS
    from .models import Job

    return router.db_for_write(Job) or DEFAULT_DB_ALIAS


def jobs_alias() -> str:
    """The database alias whose login runs the jobs' SQL (``PGBACKGROUND["DATABASE"]``)."""
    return str(app_settings.DATABASE)


def connection_params(alias: str) -> dict[str, Any]:
    """libpq keyword arguments for a Django database alias."""
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise RuntimeError(
            f"pgbackground needs PostgreSQL; database alias {alias!r} is {wrapper.vendor}"
        )
    params = {k: v for k, v in wrapper.get_connection_params().items() if k not in _NOT_LIBPQ}
    return params


def _option(name: str, value: str) -> str:
    """A ``-c name=value`` startup option, escaped for libpq's options string."""
    escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
    return f"-c {name}={escaped}"


def connect(
    alias: str,
    *,
    application_name: str | None = None,
    options: str = "",
    job: bool = False,
) -> psycopg.Connection[Any]:
    """A new autocommit psycopg connection to ``alias``.

    Bookkeeping connections (the launcher's, the pool's control and listener connections) get
    the TimeZone Django uses and ``PGBACKGROUND["SYNCHRONOUS_COMMIT"]``. Job connections
    (``job=True``) get neither: the job's own settings decide.

    None of them lets psycopg prepare statements by itself: job connections are reset with
    DISCARD ALL after every job, and on the others a statement psycopg prepared would fail
    with 0A000 ("cached plan must not change result type") after a migration that changes the
    type of a column it returns, until the connection is replaced. The statements run on every
    job are prepared by pgbackground (prepared.py), which prepares them again in that case.
    """
    return psycopg.connect(autocommit=True, **_params(alias, application_name, options, job))


def _params(alias: str, application_name: str | None, options: str, job: bool) -> dict[str, Any]:
    params = connection_params(alias)
    if application_name:
        params["application_name"] = application_name[:63]
    params["prepare_threshold"] = None
    extra = [options] if options else []
    if not job:
        tz = connections[alias].timezone_name
        if tz:
            extra.append(_option("TimeZone", tz))
        extra.append(_option("synchronous_commit", str(app_settings.SYNCHRONOUS_COMMIT)))
    else:
        # Jobs carry the launcher's TimeZone: start with Django's, so that applying it is
        # usually a no-op (see Executor._apply_session).
        tz = connections[models_alias()].timezone_name
        if tz:
            extra.append(_option("TimeZone", tz))
    if extra:
        params["options"] = " ".join([params.get("options", ""), *extra]).strip()
    return params


async def aconnect(
    alias: str, *, application_name: str | None = None
) -> psycopg.AsyncConnection[Any]:
    """The asyncio counterpart of :func:`connect` (a bookkeeping connection)."""
    return await psycopg.AsyncConnection.connect(
        autocommit=True, **_params(alias, application_name, "", False)
    )


class _LauncherConnections(threading.local):
    conn: psycopg.Connection[Any] | None = None
    key: tuple[Any, ...] | None = None


_local = _LauncherConnections()
_all_launcher_connections: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()


def launcher_connection() -> psycopg.Connection[Any]:
    """This thread's autonomous connection to the models database (autocommit, reused).

    A broken connection, a fork or changed database settings (tests switch to the test
    database) give a fresh one. The process's reply connection (replies.py) is opened with the
    first: wait() on jobs launched from then on needs no LISTEN of its own.
    """
    return launcher_connection_and_hub()[0]


def launcher_connection_and_hub() -> tuple[psycopg.Connection[Any], ReplyHub]:
    """:func:`launcher_connection` and the process's reply hub (opened if need be)."""
    from .replies import current_hub, open_hub

    conn = current_launcher_connection()
    if conn is None:
        conn = connect(models_alias(), application_name="pgbackground launcher")
        _local.conn, _local.key = conn, _launcher_key()
        _all_launcher_connections.add(conn)
    key = _local.key
    assert key is not None
    hub = current_hub(key)
    if hub is None:
        hub = open_hub(
            key, lambda: connect(models_alias(), application_name="pgbackground replies")
        )
    return conn, hub


def reply_hub() -> ReplyHub | None:
    """The process's reply hub for the models database, if it has one (none is opened)."""
    from .replies import current_hub

    return current_hub(_launcher_key())


def current_launcher_connection() -> psycopg.Connection[Any] | None:
    """This thread's launcher connection if it has a usable one (none is opened)."""
    conn = _local.conn
    if conn is None:
        return None
    key = _launcher_key()
    if _local.key != key or conn.closed or conn.broken:
        if _local.key is not None and _local.key[0] == os.getpid():
            conn.close()
        _local.conn = _local.key = None
        return None
    return conn


def _launcher_key() -> tuple[Any, ...]:
    """What the launcher connection was opened for: this process, and where the models alias
    points (tests repoint it at the test database by editing its settings in place)."""
    alias = models_alias()
    sd = connections[alias].settings_dict
    return (
        os.getpid(),
        alias,
        sd.get("NAME"),
        sd.get("HOST"),
        sd.get("PORT"),
        sd.get("USER"),
        sd.get("PASSWORD"),
        repr(sd.get("OPTIONS")),
    )


def discard_launcher_connection() -> None:
    """Close this thread's launcher connection (after an error left it unusable)."""
    conn, _local.conn, _local.key = _local.conn, None, None
    if conn is not None:
        conn.close()


def close_launcher_connections() -> None:
    """Close every thread's launcher connection and the process's reply connection (tests do
    this before dropping the database)."""
    from .replies import close_hub

    for conn in list(_all_launcher_connections):
        try:
            conn.close()
        except psycopg.Error:
            pass
    _local.conn, _local.key = None, None
    close_hub()
