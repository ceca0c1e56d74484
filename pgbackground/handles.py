"""Handles: the (id, cookie) capability for one job, and what you can do with it.

A handle is only two integers; it can be stored (``str(h)``, e.g. in the user's session) and
used from any later request or process. Every operation checks the cookie in constant time and
answers an unknown id and a wrong cookie with the same :class:`InvalidHandle`.
"""

from __future__ import annotations

import hmac
import re
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from asgiref.sync import sync_to_async
from psycopg import sql as pgsql

from .conf import MAX_CANCEL_GRACE, app_settings
from .db import aconnect, launcher_connection, launcher_connection_and_hub, models_alias
from .events import CANCEL_CHANNEL, EVENT_COLUMNS, PUBLISH_EXPRS, job_channel
from .exceptions import (
    InvalidHandle,
    JobDetached,
    ResultConsumed,
    error_for,
)
from .prepared import NamedStatement
from .replies import ReplyHub
from .results import Column, Result, columns_from_json

TERMINAL = ("stopped", "canceled", "error")
_HANDLE_TEXT = re.compile(r"(0|[1-9][0-9]{0,18}):(-?[1-9][0-9]{0,18})")
_INT64 = (-(1 << 63), (1 << 63) - 1)


class ResultInfo(NamedTuple):
    """What a job produced, without consuming its result."""

    row_count: int | None
    command_tag: str
    completed: bool
    has_error: bool
    state: str
    columns: list[Column]


class ErrorInfo(NamedTuple):
    """The structured error of a failed or canceled job."""

    sqlstate: str
    message: str
    detail: str | None
    hint: str | None
    context: str | None
    position: int | None


class Progress(NamedTuple):
    """The last ``pgbackground_progress(pct, message)`` the job reported."""

    pct: float | None
    message: str
    updated_at: datetime | None


class Notice(NamedTuple):
    """A notice the job's SQL raised (INFO, NOTICE, WARNING...), in order."""

    severity: str
    message: str
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None
    context: str | None = None


def _cookie_bytes(cookie: int) -> bytes:
    return int(cookie).to_bytes(8, "big", signed=True)


def _check_cookie(row: tuple[Any, ...] | None, cookie: int) -> tuple[Any, ...]:
    """The row, if it exists and its cookie matches; else InvalidHandle (same error, same work)."""
    stored = row[0] if row is not None else 0
    if not hmac.compare_digest(_cookie_bytes(stored), _cookie_bytes(cookie)) or row is None:
        raise InvalidHandle()
    return row


def _fetch(
    conn: psycopg.Connection[Any], job_id: int, cookie: int, columns: str
) -> tuple[Any, ...]:
    row = conn.execute(
        f"SELECT cookie, {columns} FROM pgbackground_job WHERE id = %s", [job_id]
    ).fetchone()
    return _check_cookie(row, cookie)[1:]


def _raise_job_error(job_id: int, state: str, fields: tuple[Any, ...]) -> None:
    sqlstate, message, detail, hint, context = fields
    raise error_for(
        sqlstate or ("57014" if state == "canceled" else None),
        message or ("canceled" if state == "canceled" else "job failed"),
        detail or None,
        hint or None,
        context or None,
        job_id=job_id,
    )


_ERROR_COLUMNS = "error_sqlstate, error_message, error_detail, error_hint, error_context"

# Consume the result. A result kept in the job's row (models.Job.result_data) comes back with
# it and is cleared; a small one of chunk rows (<= %(inline)s bytes) comes back in the same
# statement, its chunks deleted as they are returned. One row per chunk (or one row with NULL
# chunk columns).
_CONSUME_SQL = """
WITH c AS (
    UPDATE pgbackground_job j
    SET consumed = true, consumed_at = clock_timestamp(), result_data = NULL, result_nulls = NULL
    FROM pgbackground_job o  -- the row as it was: its result data
    WHERE j.id = %(id)s AND o.id = j.id AND j.cookie = %(cookie)s AND j.state = 'stopped'
      AND NOT j.consumed AND NOT j.detached AND NOT j.fire_and_forget
    RETURNING j.id, j.command_tag, j.row_count, j.result_columns,
              coalesce(j.result_rows, 0) AS n, j.result_bytes <= %(inline)s AS inline,
              o.result_data, o.result_nulls
), d AS (
    DELETE FROM pgbackground_jobresultchunk
    WHERE job_id = (SELECT id FROM c WHERE inline AND result_data IS NULL)
    RETURNING seq, nrows, data, nulls
)
SELECT c.command_tag, c.row_count, c.result_columns, c.n, c.inline,
       d.seq, d.nrows, d.data, d.nulls, c.result_data, c.result_nulls
FROM c LEFT JOIN d ON true ORDER BY d.seq
"""

_CONSUME = NamedStatement(
    "pgbackground_consume", _CONSUME_SQL, {"id": "bigint", "cookie": "bigint", "inline": "bigint"}
)

_CANCEL_SQL = f"""
WITH j AS (
    UPDATE pgbackground_job SET
        state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END,
        finished_at = CASE WHEN state = 'queued' THEN clock_timestamp() ELSE finished_at END,
        error_sqlstate = CASE WHEN state = 'queued' THEN '57014' ELSE error_sqlstate END,
        error_message = CASE WHEN state = 'queued'
                             THEN 'canceling job before it started due to user request'
                             ELSE error_message END,
        cancel_requested_at = coalesce(cancel_requested_at, clock_timestamp()),
        cancel_deadline = least(cancel_deadline,
                                clock_timestamp() + make_interval(secs => %(grace)s)),
        event_seq = event_seq + 1
    WHERE id = ANY(%(ids)s) AND (%(cookie)s::bigint IS NULL OR cookie = %(cookie)s)
      -- "not finished", written so that the planner looks the ids up by primary key instead of
      -- walking the partial index of every queued and running job
      AND state <> ALL (ARRAY['stopped', 'canceled', 'error'])
    RETURNING {EVENT_COLUMNS}, cancel_deadline, backend_pid
)
SELECT j.id, j.state, {PUBLISH_EXPRS},
       CASE WHEN j.state = 'running' THEN pg_notify('{CANCEL_CHANNEL}', json_build_object(
           'id', j.id,
           'grace', greatest(0, extract(epoch FROM j.cancel_deadline - clock_timestamp())))::text)
       END,
       -- Without grace, cancel the job's statement right here when this login may signal its
       -- backend: the row lock held by this statement keeps the job on that backend.
       CASE WHEN j.state = 'running' AND %(grace)s = 0 AND EXISTS (
           SELECT 1 FROM pg_stat_activity a
           WHERE a.pid = j.backend_pid AND a.datname = current_database()
             AND a.application_name LIKE 'pgbackground w%%'
             AND (pg_has_role(a.usesysid, 'MEMBER') OR pg_has_role('pg_signal_backend', 'MEMBER'))
             AND (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid)
                 <= (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
       THEN pg_cancel_backend(j.backend_pid) END
FROM j
"""

_CANCEL = NamedStatement(
    "pgbackground_cancel",
    _CANCEL_SQL,
    {"ids": "bigint[]", "cookie": "bigint", "grace": "double precision"},
)

_DETACH_SQL = """
WITH j AS (
    UPDATE pgbackground_job SET detached = true, result_data = NULL, result_nulls = NULL
    WHERE id = ANY(%(ids)s) AND (%(cookie)s::bigint IS NULL OR cookie = %(cookie)s)
      AND NOT detached
    RETURNING id, state
), d AS (
    DELETE FROM pgbackground_jobresultchunk c USING j WHERE c.job_id = j.id
)
SELECT id, state FROM j
"""


@dataclass(frozen=True, slots=True)
class Handle:
    """The capability to follow one job: its id and its random cookie.

    ``str(handle)`` gives ``"<id>:<cookie>"`` and :meth:`parse` reads exactly that back.
    """

    id: int
    cookie: int

    def __post_init__(self) -> None:
        for name in ("id", "cookie"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Handle.{name} must be an int, not {type(value).__name__}")
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValueError(f"Handle.{name} is out of the 64-bit range")
        if self.id <= 0:
            raise ValueError("Handle.id must be positive")
        if self.cookie == 0:
            raise ValueError("Handle.cookie is never 0")

    def __str__(self) -> str:
        return f"{self.id}:{self.cookie}"

    @classmethod
    def parse(cls, text: str) -> Handle:
        """Read ``str(handle)`` back; anything else raises ValueError (TypeError if not a str)."""
        if not isinstance(text, str):
            raise TypeError(f"Handle.parse() takes a str, not {type(text).__name__}")
        m = _HANDLE_TEXT.fullmatch(text)
        if m is None:
            raise ValueError("not a pgbackground handle (expected '<id>:<cookie>')")
        try:
            return cls(int(m.group(1)), int(m.group(2)))
        except (TypeError, ValueError):
            raise ValueError("not a pgbackground handle (expected '<id>:<cookie>')") from None

    # --- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The job's state, read from the database each time."""
        (state,) = _fetch(launcher_connection(), self.id, self.cookie, "state")
        return str(state)

    def job(self) -> Any:
        """The :class:`pgbackground.models.Job` row (cookie checked)."""
        from .models import Job

        job = Job.objects.using(models_alias()).filter(pk=self.id).first()
        _check_cookie(None if job is None else (job.cookie,), self.cookie)
        return job

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is in a terminal state (True) or ``timeout`` seconds pass (False).

        Sleeps on LISTEN/NOTIFY; while waiting it also checks, every WORKER_LOST_AFTER seconds,
        for workers that died, so that a job of a dead pool still ends (08006).
        """
        timeout = _validate_timeout(timeout)
        conn, hub = launcher_connection_and_hub()
        deadline = None if timeout is None else time.monotonic() + timeout
        if hub.expects(self.id, self.cookie):
            if not self._await_reply(conn, hub, deadline, verify=True):
                return False
            hub.told_ended(self.id)  # a result() after this wait need not wait for a hint
            return True
        return self._await_own_channel(conn, deadline)

    def _await_reply(
        self,
        conn: psycopg.Connection[Any],
        hub: ReplyHub,
        deadline: float | None,
        *,
        verify: bool,
    ) -> bool:
        """Wait for a job launched while the process had its reply connection: its end is
        announced on that connection's channel, which it already LISTENs to. With ``verify``,
        an announcement without the job's reply tag is confirmed by reading the row; without,
        the caller's next statement does. False when the deadline passes first."""
        from .recovery import recover_lost_workers

        check_every = _lost_check_interval()
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            slice_ = check_every if remaining is None else max(0.0, min(check_every, remaining))
            if hub.broken:  # its notifications are lost: the general way
                return self._await_own_channel(conn, deadline)
            told = hub.await_end(self.id, slice_)
            if told and (hub.take_proven(self.id) or not verify):
                return True
            (state,) = _fetch(conn, self.id, self.cookie, "state")
            if state in TERMINAL:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if not told and state == "running":
                recover_lost_workers(conn)

    def _await_own_channel(
        self, conn: psycopg.Connection[Any], deadline: float | None
    ) -> bool:
        """Wait for any job: LISTEN on its own channel, read its state, sleep on NOTIFY."""
        from .recovery import recover_lost_workers

        channel = job_channel(self.id)
        state = _listen_and_read_state(conn, channel, self.id, self.cookie)
        try:
            check_every = _lost_check_interval()
            while state not in TERMINAL:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                slice_ = check_every if remaining is None else min(check_every, remaining)
                # The whole first batch is read (leaving the generator early drops the rest).
                got = any(
                    notify.channel == channel
                    for notify in list(conn.notifies(timeout=slice_, stop_after=1))
                )
                if not got and state == "running":
                    recover_lost_workers(conn)
                (state,) = _fetch(conn, self.id, self.cookie, "state")
            return True
        finally:
            _stale_channels(conn).add(channel)

    def result(self) -> Result:
        """The job's result (waits for it to finish). Consumes it: a second call raises
        ResultConsumed. A failed job raises JobError (JobCanceled, WorkerLost) with its SQLSTATE."""
        conn, hub = launcher_connection_and_hub()
        try:
            return self._result(conn, hub)
        finally:
            hub.forget(self.id)

    def _result(self, conn: psycopg.Connection[Any], hub: ReplyHub) -> Result:
        params = {"id": self.id, "cookie": self.cookie, "inline": int(app_settings.CHUNK_BYTES) * 4}
        rows: list[Any] = []
        if hub.expects(self.id, self.cookie):
            # Launched by this process while it had its reply connection: consume as soon as
            # the end is announced (the consuming statement itself checks that the job
            # stopped); anything else takes the long way.
            self._await_reply(conn, hub, None, verify=False)
            rows = _CONSUME.run(conn, params, binary=True)
        if not rows:
            self.wait()
            rows = _CONSUME.run(conn, params, binary=True)
        if rows:
            tag, row_count, columns, stored, is_inline = rows[0][:5]
            in_row_data, in_row_nulls = rows[0][9:11]
            chunks: list[tuple[int, bytes, bytes]] | None
            if in_row_data is not None:
                chunks = [(stored, in_row_data, in_row_nulls)]
            elif is_inline:
                chunks = [(r[6], r[7], r[8]) for r in rows if r[5] is not None]
            else:
                chunks = None
            return Result(
                self.id, columns_from_json(columns), tag, row_count, stored, chunks=chunks
            )
        state, detached, ff, consumed, *err = _fetch(
            conn,
            self.id,
            self.cookie,
            f"state, detached, fire_and_forget, consumed, {_ERROR_COLUMNS}",
        )
        if detached or ff:
            raise JobDetached(
                "job keeps no result rows (submitted fire-and-forget, or"
                " PGBACKGROUND['STORE_RESULTS'] is off)"
                if ff
                else "job is detached: its result was dropped"
            )
        if state in ("error", "canceled"):
            _raise_job_error(self.id, state, tuple(err))
        if consumed:
            raise ResultConsumed("the job's result was already fetched")
        raise InvalidHandle()  # pragma: no cover - a state outside the model

    def result_info(self) -> ResultInfo:
        """Row count, command tag, whether the job completed and whether it failed (no consume)."""
        state, tag, row_count, columns = _fetch(
            launcher_connection(),
            self.id,
            self.cookie,
            "state, command_tag, row_count, result_columns",
        )
        return ResultInfo(
            row_count=row_count,
            command_tag=tag,
            completed=state in TERMINAL,
            has_error=state in ("error", "canceled"),
            state=state,
            columns=columns_from_json(columns),
        )

    def error_info(self) -> ErrorInfo | None:
        """The error of a failed or canceled job, or None."""
        state, *err, position = _fetch(
            launcher_connection(),
            self.id,
            self.cookie,
            f"state, {_ERROR_COLUMNS}, error_position",
        )
        if state not in ("error", "canceled"):
            return None
        sqlstate, message, detail, hint, context = err
        return ErrorInfo(sqlstate, message, detail or None, hint or None, context or None, position)

    def progress(self) -> Progress | None:
        """The last progress the job reported, or None if it reported none."""
        pct, message, at = _fetch(
            launcher_connection(),
            self.id,
            self.cookie,
            "progress_pct, progress_message, progress_at",
        )
        if at is None:
            return None
        return Progress(pct, message, at)

    def notices(self) -> list[Notice]:
        """The notices (INFO/NOTICE/WARNING...) the job raised so far, in order."""
        (raw,) = _fetch(launcher_connection(), self.id, self.cookie, "notices")
        return [Notice(**n) for n in raw or []]

    # --- acting --------------------------------------------------------------------------------

    def cancel(self, grace: float | None = None) -> None:
        """Stop the job. A queued job is canceled at once without running; a running one gets
        ``grace`` seconds (capped at 3600) to finish first, and without grace this returns once
        the job is terminal. Canceling a finished job changes nothing."""
        grace_s = _validate_grace(grace)
        conn = launcher_connection()
        rows = _CANCEL.run(conn, {"ids": [self.id], "cookie": self.cookie, "grace": grace_s})
        if not rows:
            _fetch(conn, self.id, self.cookie, "state")  # InvalidHandle, or already finished
            return
        if rows[0][1] == "running" and grace_s == 0:
            self.wait(timeout=max(float(app_settings.WORKER_LOST_AFTER), 5.0))

    def detach(self) -> None:
        """Stop tracking the job: it keeps running and commits; its result is dropped."""
        conn = launcher_connection()
        rows = conn.execute(_DETACH_SQL, {"ids": [self.id], "cookie": self.cookie}).fetchall()
        if not rows:
            _fetch(conn, self.id, self.cookie, "state")  # InvalidHandle, or already detached


_stale: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
    weakref.WeakKeyDictionary()
)


def _stale_channels(conn: psycopg.Connection[Any]) -> set[str]:
    """Channels a connection still LISTENs to for waits that ended (unlistened lazily, with
    the next wait's LISTEN, to save a round trip per wait)."""
    return _stale.setdefault(conn, set())


def _listen_and_read_state(
    conn: psycopg.Connection[Any], channel: str, job_id: int, cookie: int
) -> str:
    """LISTEN on ``channel`` then read the job's state, in one round trip (literal SQL: several
    statements in one simple query cannot take parameters)."""
    stale = _stale_channels(conn)
    stale.discard(channel)
    parts = [pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(c)) for c in sorted(stale)]
    parts.append(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
    parts.append(
        pgsql.SQL("SELECT cookie, state FROM pgbackground_job WHERE id = {}").format(
            pgsql.Literal(int(job_id))
        )
    )
    cur = conn.execute(pgsql.SQL("; ").join(parts))
    stale.clear()
    while cur.nextset():
        pass
    (state,) = _check_cookie(cur.fetchone(), cookie)[1:]
    return str(state)


def _lost_check_interval() -> float:
    """Seconds a wait sleeps on notifications before it reads the job row and looks for dead
    workers anyway (a job of a dead pool ends 08006 even when no pool is left)."""
    return max(float(app_settings.WORKER_LOST_AFTER), 0.5)


def _validate_timeout(timeout: object) -> float | None:
    from .launcher import validate_seconds

    return validate_seconds(timeout, "timeout")


def _validate_grace(grace: object) -> float:
    from .launcher import validate_seconds

    return validate_seconds(grace, "grace", cap=MAX_CANCEL_GRACE) or 0.0


def cancel_ids(ids: list[int], grace: float = 0.0) -> list[tuple[int, str]]:
    """Cancel jobs by id without a cookie (operators, admin): the (id, state) of those touched."""
    rows = _CANCEL.run(launcher_connection(), {"ids": ids, "cookie": None, "grace": grace})
    return [(r[0], r[1]) for r in rows]


def detach_ids(ids: list[int]) -> list[tuple[int, str]]:
    """Detach jobs by id without a cookie (operators, admin)."""
    rows = launcher_connection().execute(_DETACH_SQL, {"ids": ids, "cookie": None}).fetchall()
    return [(r[0], r[1]) for r in rows]


class AsyncHandle:
    """The asyncio twin of :class:`Handle`: the same names, as coroutines."""

    __slots__ = ("_handle",)

    def __init__(self, id: int, cookie: int) -> None:
        self._handle = Handle(id, cookie)

    @property
    def id(self) -> int:
        return self._handle.id

    @property
    def cookie(self) -> int:
        return self._handle.cookie

    @property
    def handle(self) -> Handle:
        """The synchronous handle for the same job."""
        return self._handle

    def __str__(self) -> str:
        return str(self._handle)

    def __repr__(self) -> str:
        return f"AsyncHandle(id={self.id}, cookie={self.cookie})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncHandle) and other._handle == self._handle

    def __hash__(self) -> int:
        return hash(("async", self._handle))

    @classmethod
    def parse(cls, text: str) -> AsyncHandle:
        h = Handle.parse(text)
        return cls(h.id, h.cookie)

    async def state(self) -> str:
        return await sync_to_async(lambda: self._handle.state, thread_sensitive=False)()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait on LISTEN/NOTIFY with an asyncio connection (no thread is blocked)."""
        timeout = _validate_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = job_channel(self.id)
        conn = await aconnect(models_alias(), application_name="pgbackground waiter")
        try:
            await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            check_every = _lost_check_interval()
            while True:
                cur = await conn.execute(
                    "SELECT cookie, state FROM pgbackground_job WHERE id = %s", [self.id]
                )
                (state,) = _check_cookie(await cur.fetchone(), self.cookie)[1:]
                if state in TERMINAL:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                slice_ = check_every if remaining is None else min(check_every, remaining)
                got = False
                async for notify in conn.notifies(timeout=slice_, stop_after=1):
                    if notify.channel == channel:
                        got = True
                if not got and state == "running":
                    await sync_to_async(_recover_sync, thread_sensitive=False)()
        finally:
            await conn.close()

    async def result(self) -> Result:
        await self.wait()
        result = await sync_to_async(self._handle.result, thread_sensitive=False)()
        if result.columns and len(result):
            await sync_to_async(lambda: result.rows, thread_sensitive=False)()
        return result

    async def result_info(self) -> ResultInfo:
        return await sync_to_async(self._handle.result_info, thread_sensitive=False)()

    async def error_info(self) -> ErrorInfo | None:
        return await sync_to_async(self._handle.error_info, thread_sensitive=False)()

    async def progress(self) -> Progress | None:
        return await sync_to_async(self._handle.progress, thread_sensitive=False)()

    async def notices(self) -> list[Notice]:
        return await sync_to_async(self._handle.notices, thread_sensitive=False)()

    async def cancel(self, grace: float | None = None) -> None:
        await sync_to_async(self._handle.cancel, thread_sensitive=False)(grace)

    async def detach(self) -> None:
        await sync_to_async(self._handle.detach, thread_sensitive=False)()


def _recover_sync() -> None:
    from .recovery import recover_lost_workers

    recover_lost_workers(launcher_connection())
