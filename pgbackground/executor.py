"""Run one job on one connection: apply role and settings, run the string as one simple query,
stream the last result set into storage, collect notices and progress, enforce the timeout,
deliver cancels, and say how it ended. The caller (a pool slot) records the outcome and resets
the connection afterwards.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.errors import Diagnostic
from psycopg.types.json import Jsonb

from . import sqltext
from .conf import PROGRESS_MESSAGE_MAX_CHARS
from .events import EVENT_COLUMNS, PUBLISH_FROM_J
from .prepared import NamedStatement
from .results import EncodedChunk, encode_values, pgresult_values

logger = logging.getLogger("pgbackground.executor")

# SQLSTATE of the notice pgbackground_progress() raises (a class PostgreSQL does not use).
PROGRESS_SQLSTATE = "PGBPR"
# Seconds between two progress/notice writes of one job (the last value is always written).
PROGRESS_INTERVAL = 0.1
# Seconds after which a cancel is sent again while the job's statement still runs.
CANCEL_RESEND = 0.25
# Seconds a job runs before its 'running' event is published: the claim does not publish it,
# so that the many jobs shorter than this cost every LISTENing backend one wake-up less, and
# feeds show them going from queued straight to their outcome.
RUNNING_EVENT_DELAY = 0.05
# The error message of a job canceled by cancel() (PostgreSQL's own says "user request" too).
CANCELED_BY_USER = "canceling job due to user request"

ExecStatus = pq.ExecStatus
DF = pq.DiagnosticField


@dataclass
class ClaimedJob:
    id: int
    cookie: int
    sql: str
    label: str
    owner_id: int | None
    role: str
    gucs: dict[str, str]
    timeout: float | None
    max_result_bytes: int
    fire_and_forget: bool
    cancel_grace: float | None  # set when a cancel was requested before the claim
    backend_pid: int = 0  # the job connection's pid the claim recorded


@dataclass
class JobFailure:
    sqlstate: str
    message: str
    detail: str = ""
    hint: str = ""
    context: str = ""
    position: int | None = None

    @classmethod
    def from_result(cls, res: pq.abc.PGresult) -> JobFailure:
        def f(code: DF) -> str:
            raw = res.error_field(code)
            return raw.decode("utf-8", "replace") if raw else ""

        pos = f(DF.STATEMENT_POSITION)
        return cls(
            sqlstate=f(DF.SQLSTATE) or "XX000",
            message=f(DF.MESSAGE_PRIMARY) or res.error_message.decode("utf-8", "replace").strip(),
            detail=f(DF.MESSAGE_DETAIL),
            hint=f(DF.MESSAGE_HINT),
            context=f(DF.CONTEXT),
            position=int(pos) if pos.isdigit() else None,
        )

    @classmethod
    def from_exception(cls, exc: psycopg.Error) -> JobFailure:
        d = exc.diag
        pos = d.statement_position
        return cls(
            sqlstate=exc.sqlstate or "08006",
            message=d.message_primary or str(exc).strip() or type(exc).__name__,
            detail=d.message_detail or "",
            hint=d.message_hint or "",
            context=d.context or "",
            position=int(pos) if pos and pos.isdigit() else None,
        )


@dataclass
class Outcome:
    state: str = "stopped"
    command_tag: str = ""
    row_count: int | None = None
    columns: list[tuple[str, int, int]] | None = None  # name, type oid, typmod
    result_set: int = -1  # the stored set to keep (-1: none)
    result_rows: int | None = None
    result_bytes: int = 0
    failure: JobFailure | None = None
    connection_lost: bool = False
    # The kept set's last chunk, not yet stored: the outcome's record statement stores it.
    tail: EncodedChunk | None = None
    tail_seq: int = 0
    # Record as canceled if cancel() was requested (else as this error).
    canceled_if_requested: bool = False
    # Chunks were stored before the outcome (the outcome statement drops those not kept).
    chunks_stored: bool = False


class CancelReason:
    USER = "user"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    RESULT_LIMIT = "result limit"
    COPY = "copy"


@dataclass
class JobControl:
    """What other threads tell a running job: cancel with a deadline (set via :meth:`cancel`)."""

    wake_w: int
    cancel_at: float | None = None  # monotonic time
    cancel_reason: str | None = None

    def cancel(self, grace: float, reason: str) -> None:
        at = time.monotonic() + max(0.0, grace)
        if self.cancel_at is None or at < self.cancel_at:
            self.cancel_at, self.cancel_reason = at, reason
        try:
            os.write(self.wake_w, b"c")
        except OSError:
            pass


@dataclass
class _Reporter:
    """Progress and notices collected from the job's notices, written at most every 100 ms."""

    max_notices: int
    pct: float | None = None
    message: str | None = None
    notices: list[dict[str, Any]] = field(default_factory=list)
    kept: int = 0
    dropped: int = 0
    dirty: bool = False
    last_write: float = 0.0

    def on_notice(self, diag: Diagnostic) -> None:
        if diag.sqlstate == PROGRESS_SQLSTATE:
            detail = diag.message_detail or ""
            try:
                self.pct = max(0.0, min(100.0, float(detail))) if detail else self.pct
            except ValueError:
                pass
            self.message = (diag.message_primary or "")[:PROGRESS_MESSAGE_MAX_CHARS]
            self.dirty = True
            return
        if self.kept >= self.max_notices:
            self.dropped += 1
        else:
            self.kept += 1
            self.notices.append(
                {
                    "severity": diag.severity_nonlocalized or diag.severity or "NOTICE",
                    "message": diag.message_primary or "",
                    "sqlstate": diag.sqlstate,
                    "detail": diag.message_detail,
                    "hint": diag.message_hint,
                    "context": diag.context,
                }
            )
        self.dirty = True


_PROGRESS_SQL = f"""
WITH j AS (
    UPDATE pgbackground_job SET
        progress_pct = coalesce(%(pct)s, progress_pct),
        progress_message = coalesce(%(message)s, progress_message),
        progress_at = CASE WHEN %(message)s::text IS NULL THEN progress_at
                           ELSE clock_timestamp() END,
        notices = notices || %(notices)s,
        notices_dropped = %(dropped)s,
        event_seq = event_seq + 1
    WHERE id = %(id)s AND state = 'running'
    RETURNING {EVENT_COLUMNS}
)
{PUBLISH_FROM_J}
"""
_PROGRESS = NamedStatement(
    "pgbackground_progress",
    _PROGRESS_SQL,
    {
        "id": "bigint",
        "pct": "double precision",
        "message": "text",
        "notices": "jsonb",
        "dropped": "integer",
    },
)

# The 'running' event of a job still running after RUNNING_EVENT_DELAY (current row values).
_RUNNING_EVENT_SQL = f"""
WITH j AS (SELECT {EVENT_COLUMNS} FROM pgbackground_job WHERE id = %(id)s AND state = 'running')
{PUBLISH_FROM_J}
"""

_CHUNK_SQL = (
    "INSERT INTO pgbackground_jobresultchunk (job_id, result_set, seq, nrows, data, nulls)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


class Executor:
    """Runs jobs on ``conn`` (the job connection) and stores results over ``control``."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        control: psycopg.Connection[Any],
        *,
        fetch_rows: int,
        chunk_bytes: int,
        max_notices: int,
    ) -> None:
        self.conn = conn
        self.control = control
        self.fetch_rows = max(1, fetch_rows)
        self.chunk_bytes = max(1, chunk_bytes)
        self.max_notices = max_notices
        self.reporter = _Reporter(max_notices)
        conn.add_notice_handler(self._on_notice)
        self._baseline: dict[str, str] | None = None  # the connection's settings after a reset
        self._session_user = ""
        self._signal_ok: bool | None = None  # may the control login pg_cancel_backend() it?
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.control_state = JobControl(self._wake_w)
        # Made once per connection, not per job: the job connection's socket and the wake pipe
        # (a job's loop), and the socket alone (waiting for the reset).
        self._sel = selectors.DefaultSelector()
        self._sel.register(conn.pgconn.socket, selectors.EVENT_READ, "pg")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pg_sel = selectors.DefaultSelector()
        self._pg_sel.register(conn.pgconn.socket, selectors.EVENT_READ)

    def close(self) -> None:
        self._sel.close()
        self._pg_sel.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _on_notice(self, diag: Diagnostic) -> None:
        self.reporter.on_notice(diag)

    # --- the run -------------------------------------------------------------------------------

    def begin_job(self) -> None:
        """A new job starts: fresh cancel state (the slot calls this under its lock)."""
        self.control_state = JobControl(self._wake_w)
        self._drain_wake()

    def run(self, job: ClaimedJob) -> tuple[Outcome, _Reporter]:
        self.reporter = _Reporter(self.max_notices)
        if job.cancel_grace is not None:
            self.control_state.cancel(job.cancel_grace, CancelReason.USER)
        outcome = Outcome()

        copy = sqltext.client_copy(job.sql)
        if copy is not None:
            outcome.state = "error"
            outcome.failure = _copy_failure(copy)
            return outcome, self.reporter

        try:
            self._apply_session(job)
        except psycopg.Error as exc:
            outcome.state = "error"
            outcome.failure = JobFailure.from_exception(exc)
            outcome.connection_lost = self.conn.broken or self.conn.closed
            if exc.sqlstate == "57014" and self._cancel_was_requested(job.id):
                outcome.state = "canceled"
                outcome.failure.message = CANCELED_BY_USER
                return outcome, self.reporter
            if outcome.failure.context == "":
                outcome.failure.context = "while applying the job's role and settings"
            if exc.sqlstate == "42501" and "role" in outcome.failure.message and not (
                outcome.failure.hint
            ):
                outcome.failure.hint = (
                    f"Jobs run as the launcher's role ({job.role}); the login of the"
                    " PGBACKGROUND['DATABASE'] alias must be a member of it:"
                    f" GRANT {job.role} TO {self._session_user or 'that_login'}."
                )
            return outcome, self.reporter

        cancel_at = self.control_state.cancel_at
        if cancel_at is not None and time.monotonic() >= cancel_at:
            # Canceled while its settings were applied: the SQL never starts.
            outcome.state = "canceled"
            outcome.failure = JobFailure("57014", "canceling job before it started running")
            if self.control_state.cancel_reason == CancelReason.SHUTDOWN:
                outcome.failure.message = "canceling job because the worker is shutting down"
            return outcome, self.reporter
        self._execute(job, outcome)
        return outcome, self.reporter

    def _apply_session(self, job: ClaimedJob) -> None:
        """Give the (freshly reset) connection the job's role and settings, in one round trip
        at most: what already equals the connection's reset state is skipped."""
        if self._baseline is None:
            row = self.conn.execute(
                "SELECT session_user::text, coalesce(json_object_agg(name, setting), '{}')"
                " FROM pg_settings"
            ).fetchone()
            assert row is not None
            self._session_user, self._baseline = row[0], dict(row[1])
        calls = []
        if job.role and job.role != self._session_user:
            calls.append(pgsql.SQL("set_config('role', {}, false)").format(pgsql.Literal(job.role)))
        calls += [
            pgsql.SQL("set_config({}, {}, false)").format(pgsql.Literal(k), pgsql.Literal(v))
            for k, v in job.gucs.items()
            if self._baseline.get(k) != v
        ]
        if calls:
            self.conn.execute(pgsql.SQL("SELECT {}").format(pgsql.SQL(", ").join(calls)))

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _execute(self, job: ClaimedJob, out: Outcome) -> None:
        pgconn = self.conn.pgconn
        store = not job.fire_and_forget
        started = time.monotonic()
        timeout_at = started + job.timeout if job.timeout else None
        announce_at, announced = started + RUNNING_EVENT_DELAY, False
        cancel_sent: str | None = None
        failure: JobFailure | None = None
        copy_failure: str | None = None
        limit_failure: JobFailure | None = None

        set_no = -1  # index of the current/last result set that has columns
        in_set = False
        set_rows = set_bytes = 0
        seq = 0
        pending: list[bytes | None] = []
        pending_rows = pending_bytes = 0

        held: EncodedChunk | None = None  # a finished set's last chunk, kept in memory
        held_seq = 0

        def write_pending(hold: bool = False) -> None:
            """Store the pending rows as a chunk; with ``hold``, keep it in memory instead
            (a set's last chunk: dropped if a later set replaces it, else stored with the
            outcome, saving a round trip and a commit)."""
            nonlocal pending, pending_rows, pending_bytes, seq, held, held_seq
            held = None
            if pending_rows and store and limit_failure is None:
                chunk = encode_values(pending, pending_rows)
                if hold:
                    held, held_seq = chunk, seq
                else:
                    self.control.execute(
                        _CHUNK_SQL,
                        [job.id, set_no, seq, chunk.nrows, chunk.data, chunk.nulls],
                    )
                    out.chunks_stored = True
                seq += 1
            pending, pending_rows, pending_bytes = [], 0, 0

        cancel_sent_at = 0.0

        def send_cancel(reason: str) -> None:
            """Cancel the running statement. PostgreSQL drops a cancel that arrives while the
            backend is between statements or still reading the query, so while the job runs
            on, the cancel is sent again every CANCEL_RESEND seconds."""
            nonlocal cancel_sent, cancel_sent_at
            now = time.monotonic()
            if cancel_sent is None:
                cancel_sent = reason
                logger.debug("job %s: canceling its statement (%s)", job.id, reason)
            elif now - cancel_sent_at < CANCEL_RESEND:
                return
            cancel_sent_at = now
            self._cancel_backend()

        sel = self._sel
        try:
            pgconn.send_query(job.sql.encode("utf-8"))
            pgconn.set_chunked_rows_mode(self.fetch_rows)
            while pgconn.flush():
                _wait_fd(pgconn.socket, selectors.EVENT_WRITE, 1.0)
            while True:
                if pgconn.is_busy():
                    now = time.monotonic()
                    deadlines = [
                        d for d in (timeout_at, self.control_state.cancel_at) if d is not None
                    ]
                    if self.reporter.dirty:
                        deadlines.append(self.reporter.last_write + PROGRESS_INTERVAL)
                    if not announced:
                        deadlines.append(announce_at)
                    if cancel_sent is not None:
                        deadlines.append(cancel_sent_at + CANCEL_RESEND)
                    # Capped: the selector refuses waits beyond ~24.8 days; we just loop.
                    wait = min(max(0.0, min(deadlines) - now), 3600.0) if deadlines else None
                    events = sel.select(wait)
                    for key, _ in events:
                        if key.data == "wake":
                            self._drain_wake()
                    now = time.monotonic()
                    if timeout_at is not None and now >= timeout_at:
                        send_cancel(cancel_sent or CancelReason.TIMEOUT)
                    cancel_at = self.control_state.cancel_at
                    if cancel_at is not None and now >= cancel_at:
                        send_cancel(
                            cancel_sent or self.control_state.cancel_reason or CancelReason.USER
                        )
                    pgconn.consume_input()
                    if self._flush_progress(job.id):
                        announced = True  # a progress event says 'running' too
                    elif not announced and now >= announce_at:
                        self.control.execute(_RUNNING_EVENT_SQL, {"id": job.id})
                        announced = True
                    continue
                res = pgconn.get_result()
                if res is None:
                    break
                status = res.status
                if res.command_status:
                    out.command_tag = res.command_status.decode("utf-8", "replace")
                    out.row_count = _tuples(res)
                if status == ExecStatus.TUPLES_CHUNK or (
                    status == ExecStatus.TUPLES_OK and (in_set or res.nfields)
                ):
                    if not in_set and res.nfields:
                        # A new result set with columns: it replaces the previous one.
                        write_pending()
                        in_set = True
                        set_no += 1
                        set_rows = set_bytes = 0
                        out.columns = [
                            (_text(res.fname(i)), res.ftype(i), res.fmod(i))
                            for i in range(res.nfields)
                        ]
                    if in_set and res.ntuples:
                        set_rows += res.ntuples
                        if store and limit_failure is None:
                            values = pgresult_values(res)
                            size = sum(len(v) for v in values if v is not None) + len(values)
                            set_bytes += size
                            if set_bytes > job.max_result_bytes:
                                limit_failure = _limit_failure(job.max_result_bytes)
                                pending = []
                                pending_rows = pending_bytes = 0
                                send_cancel(CancelReason.RESULT_LIMIT)
                            else:
                                pending.extend(values)
                                pending_rows += res.ntuples
                                pending_bytes += size
                                if pending_bytes >= self.chunk_bytes:
                                    write_pending()
                    if status == ExecStatus.TUPLES_OK:
                        write_pending(hold=True)
                        out.result_set, out.result_rows, out.result_bytes = (
                            set_no,
                            set_rows,
                            set_bytes,
                        )
                        in_set = False
                elif status == ExecStatus.TUPLES_OK:
                    pass  # a set without columns (SELECT FROM t): a tag, no result
                elif status == ExecStatus.COMMAND_OK:
                    pass
                elif status == ExecStatus.COPY_IN:
                    copy_failure = "FROM STDIN"
                    pgconn.put_copy_end(b"COPY FROM STDIN is not supported in a background job")
                elif status in (ExecStatus.COPY_OUT, ExecStatus.COPY_BOTH):
                    copy_failure = "TO STDOUT"
                    send_cancel(CancelReason.COPY)
                    _drain_copy_out(pgconn)
                elif status in (ExecStatus.FATAL_ERROR, ExecStatus.NONFATAL_ERROR):
                    if failure is None:
                        failure = JobFailure.from_result(res)
                elif status == ExecStatus.EMPTY_QUERY:
                    pass
            self._flush_progress(job.id, force=True)
        except psycopg.OperationalError as exc:
            out.connection_lost = True
            if failure is None:
                failure = _lost_failure(exc)

        if not out.connection_lost:
            tx = pgconn.transaction_status
            if tx in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
                try:
                    self.conn.execute("ROLLBACK")
                except psycopg.Error:
                    out.connection_lost = True
                if tx == pq.TransactionStatus.INTRANS and failure is None:
                    failure = JobFailure(
                        "25000",
                        "the job's SQL left a transaction block open; it was rolled back",
                        hint="End the string with COMMIT, or leave BEGIN out:"
                        " the string already runs as one transaction.",
                    )
            elif pgconn.status != pq.ConnStatus.OK:
                out.connection_lost = True

        # What ended the job decides how it is recorded.
        if copy_failure is not None:
            out.state, out.failure = "error", _copy_failure(copy_failure)
        elif limit_failure is not None:
            out.state, out.failure = "error", limit_failure
            if failure is None:
                limit_failure.detail += (
                    " The statements finished before the cancel arrived:"
                    " their effects were committed."
                )
        elif (
            failure is not None
            and failure.sqlstate == "57014"
            and (cancel_sent or self.control_state.cancel_reason is not None)
        ):
            # Canceled by us (timeout, shutdown, a cancel relayed by the pool), or by cancel()
            # itself, which signals the backend directly when it has no grace.
            if cancel_sent == CancelReason.TIMEOUT:
                out.state = "error"
                failure.message = f"canceling job due to timeout ({_fmt_seconds(job.timeout)})"
            elif cancel_sent == CancelReason.SHUTDOWN:
                out.state = "canceled"
                failure.message = "canceling job because the worker is shutting down"
            else:
                out.state = "canceled"
                failure.message = CANCELED_BY_USER
            out.failure = failure
        elif failure is not None:
            out.state, out.failure = "error", failure
            # A 57014 nobody here asked for: cancel() signals the backend itself, or it is the
            # SQL's own statement_timeout / a DBA's pg_cancel_backend. The statement that
            # records the outcome reads which (it waits for a cancel() still in flight: that
            # holds the row lock while it signals).
            out.canceled_if_requested = failure.sqlstate == "57014"
        else:
            out.state = "stopped"
        if out.state != "stopped":
            # Nothing of a failed string committed: no tag or row count of a statement that ran
            # before the failure (they would read as the job's outcome).
            out.result_set, out.result_rows, out.result_bytes = -1, None, 0
            out.command_tag, out.row_count = "", None
        elif held is not None:
            out.tail, out.tail_seq = held, held_seq

    def _cancel_was_requested(self, job_id: int) -> bool:
        """Did cancel() ask for this job's end? (Else a 57014 is the SQL's own, e.g. its
        statement_timeout, or a DBA's pg_cancel_backend: an error, not a cancel.)"""
        if self.control_state.cancel_reason is not None:
            return True
        try:
            row = self.control.execute(
                # FOR SHARE waits for a cancel() still in flight (it holds the row lock while it
                # signals the backend) and then reads what it committed.
                "SELECT cancel_requested_at IS NOT NULL FROM pgbackground_job WHERE id = %s"
                " FOR SHARE",
                [job_id],
            ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # --- reset, overlapped with recording the outcome ----------------------------------------

    def start_reset(self) -> bool:
        """Send DISCARD ALL without waiting for it: its round trip overlaps the recording of the
        outcome on the control connection. False if it could not be sent."""
        pgconn = self.conn.pgconn
        try:
            pgconn.send_query(b"DISCARD ALL")
            while pgconn.flush():
                _wait_fd(pgconn.socket, selectors.EVENT_WRITE, 1.0)
        except psycopg.Error:
            return False
        return True

    def finish_reset(self) -> None:
        """Wait for the DISCARD ALL sent by :meth:`start_reset`; raise if it failed. A cancel
        meant for the job that reached the reset instead (cancel() racing the job's end) costs
        the reset one more round trip, not the connection."""
        for attempt in range(2):
            error, sqlstate = self._reset_result()
            if error is None:
                return
            if sqlstate != "57014" or attempt or not self.start_reset():
                raise psycopg.OperationalError(error)

    def _reset_result(self) -> tuple[str | None, str | None]:
        """The error message and SQLSTATE of the DISCARD ALL in flight (None, None if it
        succeeded)."""
        pgconn = self.conn.pgconn
        error: str | None = None
        sqlstate: str | None = None
        while True:
            while pgconn.is_busy():
                self._pg_sel.select(1.0)
                pgconn.consume_input()
            res = pgconn.get_result()
            if res is None:
                return error, sqlstate
            if res.status != ExecStatus.COMMAND_OK:
                error = _text(res.error_message) or "DISCARD ALL failed"
                sqlstate = _text(res.error_field(DF.SQLSTATE)) or None

    def _cancel_backend(self) -> None:
        """Ask PostgreSQL to cancel the job's statement.

        ``pg_cancel_backend()`` over the control connection takes a fraction of a millisecond;
        when that login may not signal the job's backend (another login, not a member), the
        cancel key (a new connection, a few milliseconds) always works.
        """
        if self._signal_ok is not False:
            try:
                row = self.control.execute(
                    "SELECT pg_cancel_backend(%s)", [self.conn.info.backend_pid]
                ).fetchone()
                self._signal_ok = bool(row and row[0])
                if self._signal_ok:
                    return
            except psycopg.errors.InsufficientPrivilege:
                self._signal_ok = False
        try:
            self.conn.pgconn.get_cancel().cancel()
        except psycopg.Error:
            pass

    def _flush_progress(self, job_id: int, force: bool = False) -> bool:
        """Write the progress and notices collected (at most every PROGRESS_INTERVAL unless
        ``force``); whether it did (and so published an event)."""
        rep = self.reporter
        if not rep.dirty:
            return False
        now = time.monotonic()
        if not force and now - rep.last_write < PROGRESS_INTERVAL:
            return False
        notices, rep.notices = rep.notices, []
        _PROGRESS.run(
            self.control,
            {
                "id": job_id,
                "pct": rep.pct,
                "message": rep.message,
                "notices": Jsonb(notices),
                "dropped": rep.dropped,
            },
        )
        rep.dirty = False
        rep.last_write = now
        return True


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace")


def _tuples(res: pq.abc.PGresult) -> int | None:
    return res.command_tuples


def _wait_fd(fd: int, event: int, timeout: float) -> None:
    with selectors.DefaultSelector() as s:
        s.register(fd, event)
        s.select(timeout)


def _drain_copy_out(pgconn: pq.abc.PGconn) -> None:
    while True:
        nbytes, _ = pgconn.get_copy_data(0)
        if nbytes == 0:
            _wait_fd(pgconn.socket, selectors.EVENT_READ, 1.0)
            pgconn.consume_input()
        elif nbytes < 0:
            return


def _copy_failure(direction: str) -> JobFailure:
    return JobFailure(
        "0A000",
        f"COPY {direction} is not supported in a background job: there is no client to"
        " exchange the data with",
        hint="Use COPY with a server-side file or PROGRAM, or INSERT ... SELECT / a table"
        " the job writes to.",
    )


def _limit_failure(limit: int) -> JobFailure:
    return JobFailure(
        "54000",
        f"result is larger than max_result_bytes ({limit} bytes)",
        detail="The job was canceled and nothing of its result was kept.",
        hint="Pass a larger max_result_bytes to launch(), raise"
        " PGBACKGROUND['DEFAULT_MAX_RESULT_BYTES'], or return fewer rows.",
    )


def _lost_failure(exc: psycopg.Error) -> JobFailure:
    f = JobFailure.from_exception(exc)
    if not exc.sqlstate:
        f.sqlstate = "08006"
        f.detail = f.message
        f.message = "lost connection to the database while running the job"
    return f


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    return f"{seconds:g} s"
