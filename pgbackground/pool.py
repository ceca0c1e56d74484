"""The ``runworkers`` pool: slots that claim and run jobs, a listener that wakes them, heartbeats,
recovery of dead workers' jobs, and graceful shutdown.

Threads, one process:
- N *slots*, each with two connections of its own: a *job* connection (the
  ``PGBACKGROUND["DATABASE"]`` login) that runs the SQL, and a *control* connection that claims
  jobs and records progress, results and outcomes.
- one *listener* with one connection: LISTEN for new jobs and cancels, heartbeat, recovery.

Claiming is ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)``: each job is claimed by
exactly one slot of all the pools on all machines.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.dispatch import Signal

from .conf import app_settings
from .db import connect, jobs_alias, models_alias
from .events import CANCEL_CHANNEL, EVENT_COLUMNS, PUBLISH_EXPRS, QUEUE_CHANNEL
from .executor import (
    CANCELED_BY_USER,
    CancelReason,
    ClaimedJob,
    Executor,
    JobFailure,
    Outcome,
    _lost_failure,
    _Reporter,
)
from .notifies import NotificationReader
from .prepared import NamedStatement
from .recovery import recover_lost_workers, terminate_orphan_backends
from .results import TypeNames
from .signals import job_finished, job_started

logger = logging.getLogger("pgbackground.pool")
# One line per job (started: DEBUG; outcome: INFO, errors WARNING), under a logger of its own so
# that a deployment running many short jobs can turn them off and keep the pool's other lines.
job_logger = logging.getLogger("pgbackground.jobs")

# (No 'running' event here: the executor publishes it once the job has run for a while.)
# The oldest queued job after %(after)s: the slot's last claim, or 0 (the head of the queue).
# Every claimed job leaves a dead entry at the head of the queued-jobs index until VACUUM, and
# a scan from the head steps over all of them: 100,000 made a claim 0.4-0.6 ms instead of 0.03.
_CLAIM_UPDATE = """
    UPDATE pgbackground_job SET state = 'running', started_at = clock_timestamp(),
        worker_id = %(worker)s, backend_pid = %(pid)s, event_seq = event_seq + 1
    WHERE id = (SELECT id FROM pgbackground_job WHERE state = 'queued' AND id > %(after)s
                ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id, owner_id, cookie, sql, label, role, gucs, timeout, max_result_bytes,
              fire_and_forget, cancel_deadline
"""
# The claimed job (from the CTE ``c``) and whether more are queued behind it. (Not EXISTS: the
# planner drops ORDER BY/LIMIT inside EXISTS and, in a generic plan that cannot tell how many
# rows ``q.id > c.id`` keeps, may pick a sequential scan that walks every finished job first.)
_CLAIM_COLUMNS = """
       c.id, c.cookie, c.sql, c.label, c.owner_id, c.role, c.gucs::text, c.timeout,
       c.max_result_bytes, c.fire_and_forget,
       extract(epoch FROM c.cancel_deadline - clock_timestamp()),
       (SELECT q.id FROM pgbackground_job q WHERE q.state = 'queued' AND q.id > c.id
        ORDER BY q.id LIMIT 1) IS NOT NULL"""
_CLAIM_SQL = f"WITH c AS ({_CLAIM_UPDATE}) SELECT {_CLAIM_COLUMNS} FROM c"

# A result of one small chunk goes into the job's row (models.Job.result_data), unless the job
# is detached: no chunk row to insert now and to delete when the result is consumed.
_RECORD_IN_ROW = """
        result_data = CASE WHEN detached THEN NULL ELSE %(tail_data)s::bytea END,
        result_nulls = CASE WHEN detached THEN NULL ELSE %(tail_nulls)s::bytea END,"""
# The largest result kept in the job's row (data and NULL positions): the row stays well under
# PostgreSQL's 2 kB TOAST threshold, and the job list never reads much more than it did.
RESULT_IN_ROW_BYTES = 1024


def _record_update(*, in_row: bool) -> str:
    """The outcome's UPDATE of the job row (CTE ``j``); ``in_row``: it also stores the result's
    one small chunk in the row (_RECORD_IN_ROW)."""
    set_in_row = _RECORD_IN_ROW if in_row else ""
    return f"""
WITH j AS (
    UPDATE pgbackground_job SET
        state = CASE WHEN %(if_requested)s AND cancel_requested_at IS NOT NULL THEN 'canceled'
                     ELSE %(state)s END,
        finished_at = clock_timestamp(),
        sql = CASE WHEN %(redact)s
                   THEN '-- SQL redacted after the run (PGBACKGROUND["REDACT_SQL"]): '
                        || length(sql) || ' characters'
                   ELSE sql END,
        command_tag = %(tag)s, row_count = %(row_count)s,
        result_columns = %(columns)s::jsonb,
        result_rows = %(result_rows)s, result_bytes = %(result_bytes)s,
        error_sqlstate = %(sqlstate)s,
        error_message = CASE WHEN %(if_requested)s AND cancel_requested_at IS NOT NULL
                             THEN %(canceled_message)s ELSE %(message)s END,
        error_detail = %(detail)s, error_hint = %(hint)s, error_context = %(context)s,
        error_position = %(position)s,
        progress_pct = coalesce(%(pct)s, progress_pct),
        progress_message = coalesce(%(pmessage)s, progress_message),
        progress_at = CASE WHEN %(pmessage)s::text IS NULL THEN progress_at
                           ELSE clock_timestamp() END,
        notices = notices || %(notices)s::jsonb, notices_dropped = %(dropped)s,{set_in_row}
        event_seq = event_seq + 1
    -- One row by its primary key. (The row comparison keeps the planner off the partial index
    -- of running jobs, whose entries for this worker, dead ones included, it would walk.)
    WHERE id = %(id)s AND (state, worker_id) IS NOT DISTINCT FROM ('running', %(worker)s::bigint)
    RETURNING {EVENT_COLUMNS}, detached,
              extract(epoch FROM finished_at - started_at) AS run_seconds
)"""
# Chunks the job stored before its outcome (a large result, or a set a later one replaced) that
# are not to be kept: of another set, or of a job that is detached or was resolved elsewhere
# (declared lost). Not when the row already holds this very outcome: a retry after the first
# attempt committed but its reply was lost must not drop the result it stored.
_RECORD_DROP_CHUNKS = """, d AS (
    DELETE FROM pgbackground_jobresultchunk c
    WHERE c.job_id = %(id)s
      AND (c.result_set <> %(keep_set)s OR (SELECT detached FROM j)
           OR (NOT EXISTS (SELECT 1 FROM j)
               AND NOT EXISTS (SELECT 1 FROM pgbackground_job o WHERE o.id = %(id)s
                               AND o.state = 'stopped' AND o.worker_id = %(worker)s)))
)"""
_RECORD_TAIL = """, tail AS (
    INSERT INTO pgbackground_jobresultchunk (job_id, result_set, seq, nrows, data, nulls)
    SELECT %(id)s, %(keep_set)s, %(tail_seq)s, %(tail_nrows)s, %(tail_data)s, %(tail_nulls)s
    FROM j WHERE %(tail_nrows)s::int IS NOT NULL AND NOT j.detached
)"""
_RECORD_OUTPUT = f"SELECT j.id, j.state, j.run_seconds, {PUBLISH_EXPRS.strip()} FROM j"


def _record_sql(*, in_row: bool, claim: bool) -> str:
    """The outcome statement. ``in_row``: the result, if any, is one small chunk, stored in the
    job's row (the job stored no chunk row before its outcome: nothing to drop); otherwise
    chunk rows the job stored and does not keep are dropped and its last chunk is stored as one
    more. ``claim``: under a deep queue, also claim the next job (one round trip, one commit);
    columns: _RECORD_OUTPUT's six, then _CLAIM_SQL's (NULLs when nothing matched)."""
    update = _record_update(in_row=in_row)
    ctes = update if in_row else update + _RECORD_DROP_CHUNKS + _RECORD_TAIL
    if not claim:
        return f"{ctes}\n{_RECORD_OUTPUT}"
    return f"""{ctes}, c AS ({_CLAIM_UPDATE})
SELECT r.*, n.*
FROM (SELECT 1) AS one
LEFT JOIN ({_RECORD_OUTPUT}) AS r ON true
LEFT JOIN (SELECT {_CLAIM_COLUMNS} FROM c) AS n ON true
"""


def result_in_row(outcome: Outcome) -> bool:
    """Is the outcome's result (if any) one chunk small enough for the job's row?"""
    if outcome.chunks_stored:
        return False
    tail = outcome.tail
    return tail is None or (
        tail.nrows == outcome.result_rows
        and len(tail.data) + len(tail.nulls) <= RESULT_IN_ROW_BYTES
    )


# The three statements of every job, prepared on each control connection (prepared.py).
_CLAIM_TYPES = {"worker": "bigint", "pid": "integer", "after": "bigint"}
# A job queued with a lower id than a slot's last claim (launched in a transaction that
# committed late, queued again after its worker died, skipped while locked) is found by the
# claim from the head that follows a claim that found nothing after the slot's last one, and,
# while the queue stays deep, by the claim from the head every this many claims.
CLAIM_FROM_HEAD_EVERY = 64
_RECORD_TYPES = {
    "id": "bigint",
    "worker": "bigint",
    "state": "text",
    "tag": "text",
    "row_count": "bigint",
    "keep_set": "integer",
    "columns": "jsonb",
    "result_rows": "bigint",
    "result_bytes": "bigint",
    "sqlstate": "text",
    "message": "text",
    "detail": "text",
    "hint": "text",
    "context": "text",
    "position": "integer",
    "pct": "double precision",
    "pmessage": "text",
    "notices": "jsonb",
    "dropped": "integer",
    "redact": "boolean",
    "if_requested": "boolean",
    "canceled_message": "text",
    "tail_seq": "integer",
    "tail_nrows": "integer",
    "tail_data": "bytea",
    "tail_nulls": "bytea",
}
_CLAIM = NamedStatement("pgbackground_claim", _CLAIM_SQL, _CLAIM_TYPES)
# By (in_row, claim).
_RECORDS = {
    (in_row, claim): NamedStatement(
        "pgbackground_record_claim" if claim else "pgbackground_record",
        _record_sql(in_row=in_row, claim=claim),
        {**_RECORD_TYPES, **_CLAIM_TYPES} if claim else _RECORD_TYPES,
    )
    for in_row in (True, False)
    for claim in (True, False)
}
_RECORD_SQL = _RECORDS[False, False].sql
_RECORD_AND_CLAIM_SQL = _RECORDS[False, True].sql

_REBIND_SQL = (
    "UPDATE pgbackground_job SET backend_pid = %s"
    " WHERE id = %s AND state = 'running' AND worker_id = %s"
)

_REGISTER_SQL = (
    "INSERT INTO pgbackground_worker (name, hostname, pid, concurrency)"
    " VALUES (%s, %s, %s, %s) RETURNING id"
)
_HEARTBEAT_SQL = (
    "UPDATE pgbackground_worker SET heartbeat_at = clock_timestamp() WHERE id = %s"
    " RETURNING stopped_at IS NOT NULL"
)
_STOP_SQL = (
    "UPDATE pgbackground_worker SET stopped_at = clock_timestamp(), stop_reason = %s"
    " WHERE id = %s AND stopped_at IS NULL"
)
# Jobs 'running' under this worker that none of its slots holds: their claim committed but its
# reply never reached the slot (the connection died in between). They never started: queue them
# again (recovery only looks at dead workers, so nothing else would).
_REQUEUE_UNHELD_SQL = f"""
WITH j AS (
    UPDATE pgbackground_job SET state = 'queued', started_at = NULL, worker_id = NULL,
        backend_pid = NULL, event_seq = event_seq + 1
    WHERE state = 'running' AND worker_id = %(worker)s AND NOT (id = ANY(%(held)s::bigint[]))
    RETURNING {EVENT_COLUMNS}
)
SELECT j.id, pg_notify('{QUEUE_CHANNEL}', j.id::text), {PUBLISH_EXPRS.strip()} FROM j
"""

_PENDING_CANCELS_SQL = (
    "SELECT id, greatest(0, extract(epoch FROM cancel_deadline - clock_timestamp()))"
    " FROM pgbackground_job WHERE state = 'running' AND worker_id = %s"
    " AND cancel_requested_at IS NOT NULL"
)


class Backoff:
    """Exponential back-off for reconnecting: 0.1 s doubling to 5 s, reset on success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class Pool:
    """A ``runworkers`` process: ``concurrency`` slots and one listener."""

    def __init__(
        self,
        *,
        concurrency: int = 2,
        name: str | None = None,
        shutdown_grace: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.hostname = socket.gethostname()
        self.name = name or f"{self.hostname}:{os.getpid()}"
        self.shutdown_grace = shutdown_grace
        self.worker_id: int | None = None
        self.models_alias = models_alias()
        self.jobs_alias = jobs_alias()
        self.draining = threading.Event()  # stop claiming
        self.stopped = threading.Event()  # stop everything
        self._work = threading.Condition()
        self._tokens = 0
        # Slots waiting for a token, and whether the listener stopped listening to the queue
        # channel because none was (both under _work; see "work signalling").
        self._idle = 0
        self._queue_paused = False
        # Written by a slot that starts waiting while the queue channel is not listened to:
        # wakes the listener, which listens again.
        self._resume_r, self._resume_w = os.pipe()
        os.set_blocking(self._resume_r, False)
        os.set_blocking(self._resume_w, False)
        self.slots: list[Slot] = []
        self._listener: threading.Thread | None = None
        self.heartbeat_interval = float(app_settings.HEARTBEAT_INTERVAL)
        self.poll_interval = float(app_settings.POLL_INTERVAL)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.worker_id = self._register()
        logger.info(
            "worker %s (%s) started: %d slots, database %r, jobs run by alias %r",
            self.worker_id,
            self.name,
            self.concurrency,
            self.models_alias,
            self.jobs_alias,
        )
        self._listener = threading.Thread(
            target=self._listen, name="pgbackground-listener", daemon=True
        )
        self._listener.start()
        for n in range(self.concurrency):
            slot = Slot(self, n)
            self.slots.append(slot)
            slot.start()

    def _register(self) -> int:
        backoff = Backoff()
        while True:
            try:
                with connect(self.models_alias, application_name="pgbackground register") as c:
                    row = c.execute(
                        _REGISTER_SQL, [self.name, self.hostname, os.getpid(), self.concurrency]
                    ).fetchone()
                    assert row is not None
                    return int(row[0])
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                logger.warning(
                    "cannot reach the database (%s); retrying in %.1f s", _one_line(exc), delay
                )
                if self.stopped.wait(delay):
                    raise

    def shutdown(self, *, grace: float | None = None) -> None:
        """Stop claiming, let running jobs finish within ``grace`` seconds, then cancel them."""
        grace = self.shutdown_grace if grace is None else grace
        if not self.draining.is_set():
            logger.info(
                "worker %s shutting down: %d running job(s), grace %.1f s",
                self.worker_id,
                self.busy_count(),
                grace,
            )
        self.draining.set()
        self.wake_all()
        deadline = time.monotonic() + grace
        for slot in self.slots:
            _join(slot, max(0.0, deadline - time.monotonic()))
        self.cancel_running(CancelReason.SHUTDOWN)
        for slot in self.slots:
            _join(slot, 30.0)
        self.stopped.set()
        if self._listener is not None:
            _join(self._listener, 5.0)
        threads: list[threading.Thread] = [*self.slots, *filter(None, [self._listener])]
        if not any(t.is_alive() for t in threads):  # else a late write could hit a reused fd
            for fd in (self._resume_r, self._resume_w):
                os.close(fd)
        self._mark_stopped("shutdown")
        logger.info("worker %s stopped", self.worker_id)

    def cancel_running(self, reason: str) -> None:
        for slot in self.slots:
            slot.cancel_current(0.0, reason)

    def busy_count(self) -> int:
        return sum(1 for s in self.slots if s.current_job is not None)

    def _mark_stopped(self, reason: str) -> None:
        try:
            with connect(self.models_alias, application_name="pgbackground stop") as c:
                c.execute(_STOP_SQL, [reason, self.worker_id])
        except psycopg.Error as exc:
            logger.warning("could not mark worker %s stopped: %s", self.worker_id, _one_line(exc))

    # --- work signalling -----------------------------------------------------------------------

    # A slot that finished a job claims again at once only if the claim said more jobs were
    # queued; otherwise it sleeps until a queue notification hands it a token (one per NOTIFY),
    # or POLL_INTERVAL passes. So an idle queue costs no empty claims after each job.
    # Tokens are capped at the number of slots: while every slot is busy claiming on its own
    # (a deep queue), NOTIFYs would otherwise pile up tokens that each cost an empty claim
    # once the queue is drained (5,000 of them after 5,000 jobs launched in a burst).
    #
    # While no slot waits for a token, nothing needs to hear of new jobs: a busy slot claims
    # the next job when it records its outcome, or waits once the queue is empty. So the
    # listener stops listening to the queue channel then (every launch would otherwise wake
    # the pool's Python for nothing), and listens again as soon as a slot starts waiting;
    # the slots then all look at the queue once (wake_all), which finds the jobs queued
    # meanwhile. Both decisions are taken under _work, so a slot that starts waiting either
    # is counted before the listener decides to stop, or sees that it stopped and wakes it.

    def wake_one(self) -> None:
        """A job was queued: one token (at most one per slot), one slot woken."""
        with self._work:
            self._tokens = min(self._tokens + 1, self.concurrency)
            self._work.notify()

    def wake_all(self) -> None:
        """Jobs may have been queued unseen (start, reconnect, shutdown): every slot looks."""
        with self._work:
            self._tokens = max(self._tokens, self.concurrency)
            self._work.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        with self._work:
            if not self._tokens and not self.draining.is_set():
                self._idle += 1
                if self._queue_paused:
                    self._wake_listener()
                try:
                    self._work.wait(timeout)
                finally:
                    self._idle -= 1
            if self._tokens:
                self._tokens -= 1

    def _pause_queue(self) -> bool:
        """Should the listener stop listening to the queue channel (no slot waits)? If so, it
        is marked as not listening from now on."""
        with self._work:
            if self._idle or self._queue_paused or self.draining.is_set():
                return False
            self._queue_paused = True
            return True

    def _resume_queue(self) -> bool:
        """Should the listener listen to the queue channel again (a slot waits, or the pool
        drains)?"""
        with self._work:
            return self._queue_paused and bool(self._idle or self.draining.is_set())

    def _queue_resumed(self) -> None:
        """The listener listens to the queue channel again: every slot looks at the queue."""
        with self._work:
            self._queue_paused = False
        self.wake_all()

    def _wake_listener(self) -> None:
        try:
            os.write(self._resume_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the listener has been woken already

    # --- the listener thread -------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = Backoff()
        conn: psycopg.Connection[Any] | None = None
        reader: NotificationReader | None = None
        next_beat = 0.0
        while not self.stopped.is_set():
            try:
                if conn is None or reader is None:
                    conn = connect(
                        self.models_alias,
                        application_name=f"pgbackground listener w{self.worker_id}",
                    )
                    reader = NotificationReader(conn, wakeup_fd=self._resume_r)
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    backoff.reset()
                    self._queue_resumed()  # jobs queued while we were not listening
                    self._dispatch_pending_cancels(conn)
                    next_beat = 0.0
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(conn)
                    next_beat = now + self.heartbeat_interval
                wait = min(0.25, max(0.0, next_beat - time.monotonic()))
                cancel_seen = queue_seen = False
                for notify in reader.read(conn, wait):
                    if notify.channel == QUEUE_CHANNEL:
                        queue_seen = True
                        self.wake_one()
                    elif notify.channel == CANCEL_CHANNEL:
                        cancel_seen = True
                if cancel_seen:
                    self._dispatch_cancel(conn)
                if self._resume_queue():
                    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
                    self._queue_resumed()
                    logger.debug("a slot waits for work: listening to the queue channel again")
                elif queue_seen and self._pause_queue():
                    conn.execute(f"UNLISTEN {QUEUE_CHANNEL}")
                    logger.debug("every slot is busy: not listening to the queue channel")
            except psycopg.OperationalError as exc:
                if reader is not None:
                    reader.close()
                if conn is not None:
                    conn.close()
                conn, reader = None, None
                delay = backoff.next()
                logger.warning(
                    "listener lost its connection (%s); reconnecting in %.1f s",
                    _one_line(exc),
                    delay,
                )
                self.stopped.wait(delay)
            except Exception:
                logger.exception("listener error; reconnecting")
                if reader is not None:
                    reader.close()
                if conn is not None:
                    conn.close()
                conn, reader = None, None
                self.stopped.wait(backoff.next())
        if reader is not None:
            reader.close()
        if conn is not None:
            conn.close()

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(_HEARTBEAT_SQL, [self.worker_id]).fetchone()
        if row is None or row[0]:
            logger.error(
                "worker %s was declared dead by another process (heartbeat too late);"
                " canceling its jobs and registering again",
                self.worker_id,
            )
            self.cancel_running(CancelReason.SHUTDOWN)
            row2 = conn.execute(
                _REGISTER_SQL, [self.name, self.hostname, os.getpid(), self.concurrency]
            ).fetchone()
            assert row2 is not None
            self.worker_id = int(row2[0])
        recover_lost_workers(conn)
        terminate_orphan_backends(conn)
        self._requeue_unheld(conn)
        self._dispatch_pending_cancels(conn)

    def _requeue_unheld(self, conn: psycopg.Connection[Any]) -> None:
        """Queue again the jobs this worker claimed but no slot holds (see _REQUEUE_UNHELD_SQL).
        The slots' claim locks are held meanwhile, so no claim is between its commit and its
        slot; a slot busy claiming for long only defers the sweep to the next heartbeat."""
        taken: list[threading.Lock] = []
        try:
            for slot in self.slots:
                if not slot.claim_lock.acquire(timeout=1.0):
                    return
                taken.append(slot.claim_lock)
            held = [s.held_job for s in self.slots if s.held_job is not None]
            rows = conn.execute(
                _REQUEUE_UNHELD_SQL, {"worker": self.worker_id, "held": held}
            ).fetchall()
        finally:
            for lock in taken:
                lock.release()
        for row in rows:
            logger.warning(
                "job %s: its claim by worker %s committed but never reached a slot"
                " (connection lost); queued again",
                row[0],
                self.worker_id,
            )

    def _dispatch_cancel(self, conn: psycopg.Connection[Any]) -> None:
        """A cancel NOTIFY only says "look": NOTIFY is not authenticated (a job's SQL can send
        one), so what is canceled, and with what grace, is read from the job rows."""
        self._dispatch_pending_cancels(conn)

    def _dispatch_pending_cancels(self, conn: psycopg.Connection[Any]) -> None:
        for job_id, grace in conn.execute(_PENDING_CANCELS_SQL, [self.worker_id]).fetchall():
            self._cancel_job(int(job_id), float(grace or 0.0))

    def _cancel_job(self, job_id: int, grace: float) -> None:
        logger.debug("cancel requested for job %s (grace %.3f s)", job_id, grace)
        for slot in self.slots:
            slot.cancel_current(grace, CancelReason.USER, job_id=job_id)


class Slot(threading.Thread):
    """Claims one job at a time and runs it on its own connections."""

    def __init__(self, pool: Pool, number: int) -> None:
        super().__init__(name=f"pgbackground-slot-{number}", daemon=True)
        self.pool = pool
        self.number = number
        self.current_job: int | None = None
        # The job this slot claimed and has not finished recording (set under claim_lock).
        self.held_job: int | None = None
        self.claim_lock = threading.Lock()
        self.control: psycopg.Connection[Any] | None = None
        self.job_conn: psycopg.Connection[Any] | None = None
        self.executor: Executor | None = None
        self._lock = threading.Lock()
        self._job_conn_options = ""
        self.type_names = TypeNames()  # result column type names, per control connection
        # Cancels that arrived for a job claimed ahead, before it started: (grace, reason).
        self._early_cancel: dict[int, tuple[float, str]] = {}
        self._last_started: int | None = None  # the last job whose run began
        self._last_claimed: int | None = None  # where the next claim starts looking
        self._claims = 0

    def cancel_current(self, grace: float, reason: str, *, job_id: int | None = None) -> None:
        """Cancel the job this slot runs (only if it is ``job_id``, when given), atomically with
        respect to the slot moving on to its next job."""
        with self._lock:
            if self.current_job is None or self.executor is None:
                # Between jobs: one claimed and not started yet is canceled as it starts.
                held = self.held_job
                if held is not None and held != self._last_started and job_id in (None, held):
                    self._early_cancel[held] = (grace, reason)
                return
            if job_id is None or self.current_job == job_id:
                self.executor.control_state.cancel(grace, reason)

    # --- connections ---------------------------------------------------------------------------

    def _connect(self) -> None:
        pool = self.pool
        if self.control is None or self.control.closed or self.control.broken:
            self._close(self.control)
            self.control = connect(
                pool.models_alias,
                application_name=f"pgbackground control w{pool.worker_id} s{self.number}",
            )
            if self.control.info.server_version >= 140000:
                self._job_conn_options = "-c client_connection_check_interval=1000"
        if self.job_conn is None or self.job_conn.closed or self.job_conn.broken:
            self._close(self.job_conn)
            if self.executor is not None:
                self.executor.close()
                self.executor = None
            self.job_conn = connect(
                pool.jobs_alias,
                application_name=f"pgbackground w{pool.worker_id} s{self.number}",
                options=self._job_conn_options,
                job=True,
            )
        if (
            self.executor is None
            or self.executor.conn is not self.job_conn
            or (self.executor.control is not self.control)
        ):
            if self.executor is not None:
                self.executor.close()
            self.executor = Executor(
                self.job_conn,
                self.control,
                fetch_rows=int(app_settings.FETCH_ROWS),
                chunk_bytes=int(app_settings.CHUNK_BYTES),
                max_notices=int(app_settings.MAX_NOTICES),
            )

    @staticmethod
    def _close(conn: psycopg.Connection[Any] | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing a broken connection
                pass

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        pool = self.pool
        backoff = Backoff()
        more = True  # look at the queue once on start
        # A job claimed by the statement that recorded the previous outcome, not started yet:
        # run even when draining (it is 'running' already).
        job: ClaimedJob | None = None
        while job is not None or not pool.draining.is_set():
            try:
                if job is None:
                    if not more:
                        pool.wait_for_work(pool.poll_interval)
                        if pool.draining.is_set():
                            break
                    self._connect()
                    backoff.reset()
                    job, more = self._claim()
                    if job is None:
                        continue
                else:
                    self._connect()
                    self._rebind(job)
                job, more = self._run(job, more=more)
            except psycopg.OperationalError as exc:
                self._drop_unstarted(job)
                job = None
                more = True  # look at the queue as soon as we are back
                delay = backoff.next()
                logger.warning(
                    "slot %d: database connection lost (%s); reconnecting in %.1f s",
                    self.number,
                    _one_line(exc),
                    delay,
                )
                self._close(self.control)
                self._close(self.job_conn)
                pool.stopped.wait(delay) if pool.draining.is_set() else pool.draining.wait(delay)
            except Exception:
                self._drop_unstarted(job)
                job = None
                more = True
                logger.exception("slot %d: unexpected error", self.number)
                self._close(self.control)
                self._close(self.job_conn)
                pool.draining.wait(backoff.next())
        self._close(self.control)
        self._close(self.job_conn)
        if self.executor is not None:
            self.executor.close()

    def _claim(self) -> tuple[ClaimedJob | None, bool]:
        """The oldest queued job, now ours, and whether more were queued behind it."""
        assert self.control is not None and self.job_conn is not None
        pid = self.job_conn.info.backend_pid
        after = self._claim_after()
        with self.claim_lock:
            rows = _CLAIM.run(
                self.control, {"worker": self.pool.worker_id, "pid": pid, "after": after}
            )
            row = rows[0] if rows else None
            self.held_job = None if row is None else int(row[0])
        return self._claimed(row, pid, after)

    def _claim_after(self) -> int:
        """Where the next claim starts looking (see _CLAIM_UPDATE): after this slot's last
        claim, or from the head of the queue (0) every CLAIM_FROM_HEAD_EVERY claims."""
        self._claims += 1
        if self._last_claimed is None or self._claims % CLAIM_FROM_HEAD_EVERY == 0:
            return 0
        return self._last_claimed

    def _claimed(
        self, row: tuple[Any, ...] | None, backend_pid: int, after: int
    ) -> tuple[ClaimedJob | None, bool]:
        """The job a claim statement returned (None if the queue was empty), and whether more
        were queued behind it (or, after a claim that looked past the head and found nothing,
        whether to look again from the head)."""
        if row is None:
            self._last_claimed = None
            return None, after != 0
        self._last_claimed = int(row[0])
        (
            job_id,
            cookie,
            sql,
            label,
            owner_id,
            role,
            gucs,
            timeout,
            max_bytes,
            ff,
            cancel_in,
            more,
            *_,
        ) = row
        job = ClaimedJob(
            id=job_id,
            cookie=cookie,
            sql=sql,
            label=label,
            owner_id=owner_id,
            role=role,
            gucs=dict(_settings_items(gucs)),
            timeout=timeout,
            max_result_bytes=max_bytes,
            fire_and_forget=ff,
            cancel_grace=None if cancel_in is None else max(0.0, float(cancel_in)),
            backend_pid=backend_pid,
        )
        return job, bool(more)

    def _drop_unstarted(self, job: ClaimedJob | None) -> None:
        """After an error: a job claimed ahead that never started is let go (the heartbeat
        queues it again); one that started stays held (it must not run twice)."""
        if job is not None and job.id != self._last_started:
            with self.claim_lock:
                if self.held_job == job.id:
                    self.held_job = None
        self._early_cancel.clear()

    def _rebind(self, job: ClaimedJob) -> None:
        """A job claimed ahead will run on a job connection opened since: its row must name the
        backend that runs it (cancel() signals that pid)."""
        assert self.control is not None and self.job_conn is not None
        pid = self.job_conn.info.backend_pid
        if pid != job.backend_pid:
            self.control.execute(_REBIND_SQL, [pid, job.id, self.pool.worker_id])
            job.backend_pid = pid

    def _run(self, job: ClaimedJob, *, more: bool) -> tuple[ClaimedJob | None, bool]:
        """Run a claimed job and record its outcome. When ``more`` jobs were queued behind it,
        the next one is claimed in the same round trip and returned, with whether more were
        queued behind that one; else (None, ``more``)."""
        assert self.executor is not None
        label = f" [{job.label}]" if job.label else ""
        with self._lock:
            self.current_job = self._last_started = job.id
            self.executor.begin_job()  # from now on, cancels for this job reach the executor
            early = self._early_cancel.pop(job.id, None)
            self._early_cancel.clear()
            if early is not None:
                self.executor.control_state.cancel(*early)
        _send_robust(
            job_started, job_id=job.id, label=job.label, worker_id=self.pool.worker_id
        )
        job_logger.debug("job %s%s started on slot %d", job.id, label, self.number)
        t0 = time.monotonic()
        try:
            outcome, reporter = self.executor.run(job)
        except psycopg.OperationalError as exc:
            # The control connection failed (the job connection's failures are outcomes).
            outcome = Outcome(state="error", connection_lost=True, chunks_stored=True)
            reporter = _Reporter(0)
            outcome.failure = _lost_failure(exc)
        except Exception as exc:
            # A bug of ours must not leave the job 'running' under a live worker: record it.
            logger.exception("job %s: internal error in the worker", job.id)
            outcome = Outcome(state="error", connection_lost=True, chunks_stored=True)
            reporter = _Reporter(0)
            outcome.failure = JobFailure(
                "XX000", f"internal error in the pgbackground worker: {_one_line(exc)}"
            )
        finally:
            with self._lock:
                self.current_job = None
        elapsed = time.monotonic() - t0
        # The job connection's reset (DISCARD ALL) runs while the outcome is recorded.
        reset_sent = not outcome.connection_lost and self.executor.start_reset()
        claim_next = more and not outcome.connection_lost and not self.pool.draining.is_set()
        claimed = self._record(job, outcome, reporter, claim_next=claim_next)
        if claimed is None:
            self.held_job = None
        try:
            self._after(job, outcome, elapsed, reset_sent=reset_sent)
        except BaseException:
            self.held_job = None  # the job claimed ahead never starts: the heartbeat requeues it
            raise
        return (None, more) if claimed is None else claimed

    def _after(
        self, job: ClaimedJob, outcome: Outcome, elapsed: float, *, reset_sent: bool
    ) -> None:
        """After the outcome is recorded: log, signal, and finish the job connection's reset
        (or close it when the reset could not be sent)."""
        assert self.executor is not None
        _log_outcome(job, outcome, elapsed)
        _send_robust(
            job_finished,
            job_id=job.id,
            label=job.label,
            worker_id=self.pool.worker_id,
            state=outcome.state,
            sqlstate=outcome.failure.sqlstate if outcome.failure else None,
            duration=elapsed,
        )
        if reset_sent:
            self._finish_reset()
        else:
            self._close(self.job_conn)

    def _record(
        self, job: ClaimedJob, outcome: Outcome, reporter: _Reporter, *, claim_next: bool
    ) -> tuple[ClaimedJob | None, bool] | None:
        """Write the outcome; retried on a new control connection until it is written (or the
        pool stops: then recovery marks the job lost). With ``claim_next``, the same statement
        claims the next job: it and whether more were queued behind it (as _claim returns
        them); None if not claimed."""
        f = outcome.failure
        cols = outcome.columns if outcome.result_set >= 0 and outcome.columns else []
        params = outcome_params(job.id, self.pool.worker_id, outcome, reporter)
        in_row = result_in_row(outcome)
        backoff = Backoff()
        while True:
            try:
                if self.control is None or self.control.closed or self.control.broken:
                    self._close(self.control)
                    self.control = connect(
                        self.pool.models_alias,
                        application_name=f"pgbackground control w{self.pool.worker_id}"
                        f" s{self.number}",
                    )
                if cols:
                    params["columns"] = self.type_names.columns_json(self.control, cols)
                claimed: tuple[ClaimedJob | None, bool] | None = None
                if claim_next:
                    claim_next = False  # a retry only records
                    row, claimed = self._record_and_claim(params, in_row=in_row)
                else:
                    rows = _RECORDS[in_row, False].run(self.control, params)
                    row = rows[0] if rows else None
                if row is None:
                    logger.warning(
                        "job %s was already resolved elsewhere (declared lost?);"
                        " its outcome %s was not recorded",
                        job.id,
                        outcome.state,
                    )
                elif row[1] == "canceled" and outcome.state != "canceled" and f is not None:
                    outcome.state, f.message = "canceled", CANCELED_BY_USER
                return claimed
            except psycopg.OperationalError as exc:
                self._close(self.control)
                self.control = None
                if self.pool.stopped.is_set():
                    logger.error(
                        "job %s: could not record its outcome (%s)", job.id, _one_line(exc)
                    )
                    return None
                delay = backoff.next()
                logger.warning(
                    "job %s: cannot record its outcome yet (%s); retrying in %.1f s",
                    job.id,
                    _one_line(exc),
                    delay,
                )
                self.pool.stopped.wait(delay)

    def _record_and_claim(
        self, params: dict[str, Any], *, in_row: bool
    ) -> tuple[tuple[Any, ...] | None, tuple[ClaimedJob | None, bool]]:
        """The outcome and the next claim in one statement: the outcome's row, and the claimed
        job with whether more were queued behind it."""
        assert self.control is not None and self.job_conn is not None
        pid = self.job_conn.info.backend_pid
        after = self._claim_after()
        with self.claim_lock:
            (both,) = _RECORDS[in_row, True].run(
                self.control, {**params, "pid": pid, "after": after}
            )
            row = both[:6] if both[0] is not None else None
            claimed = both[6:] if both[6] is not None else None
            self.held_job = None if claimed is None else int(claimed[0])
        return row, self._claimed(claimed, pid, after)

    def _finish_reset(self) -> None:
        """The job connection is clean again (DISCARD ALL: no settings, role, temp tables,
        prepared statements, locks or LISTENs left by the job), or it is closed."""
        assert self.executor is not None
        try:
            self.executor.finish_reset()
        except psycopg.Error as exc:
            logger.warning(
                "slot %d: could not reset the job connection (%s); reconnecting",
                self.number,
                _one_line(exc),
            )
            self._close(self.job_conn)


def outcome_params(
    job_id: int, worker_id: int | None, outcome: Outcome, reporter: _Reporter
) -> dict[str, Any]:
    """The parameters of the outcome statement (``columns``: None, the slot fills it in with
    the column type names of its control connection)."""
    f = outcome.failure
    return {
        "id": job_id,
        "worker": worker_id,
        "state": outcome.state,
        "tag": outcome.command_tag[:64],
        "row_count": outcome.row_count,
        "keep_set": outcome.result_set,
        "columns": None,
        "result_rows": outcome.result_rows,
        "result_bytes": outcome.result_bytes,
        "sqlstate": f.sqlstate if f else "",
        "message": f.message if f else "",
        "detail": f.detail if f else "",
        "hint": f.hint if f else "",
        "context": f.context if f else "",
        "position": f.position if f else None,
        "pct": reporter.pct,
        "pmessage": reporter.message,
        "notices": json.dumps(reporter.notices) if reporter.notices else "[]",
        "dropped": reporter.dropped,
        "redact": bool(app_settings.REDACT_SQL),
        "if_requested": outcome.canceled_if_requested,
        "canceled_message": CANCELED_BY_USER,
        "tail_seq": outcome.tail_seq,
        "tail_nrows": outcome.tail.nrows if outcome.tail else None,
        "tail_data": outcome.tail.data if outcome.tail else None,
        "tail_nulls": outcome.tail.nulls if outcome.tail else None,
    }


@functools.lru_cache(maxsize=256)
def _settings_items(gucs: str | None) -> tuple[tuple[str, str], ...]:
    """The settings a job carries, from their JSON text (jobs of one launcher carry the same
    text: parsed once)."""
    return tuple(json.loads(gucs).items()) if gucs else ()


def _join(thread: threading.Thread, timeout: float) -> None:
    """Join in short slices: Python runs signal handlers in the main thread only between its
    bytecodes, and a signal the kernel hands to another thread does not interrupt a long join
    (a second Ctrl+C during the shutdown grace would wait for the grace to end)."""
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        thread.join(min(remaining, 0.2))


def _send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send a pool signal; a receiver that raises is logged, never allowed to stop the slot
    between a claim and the job's outcome."""
    for receiver, result in signal.send_robust(sender=Pool, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "receiver %r of a pgbackground signal raised: %s",
                receiver,
                _one_line(result),
                exc_info=result,
            )


def _one_line(exc: BaseException) -> str:
    """An exception as one log line (libpq's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _log_outcome(job: ClaimedJob, outcome: Outcome, elapsed: float) -> None:
    label = f" [{job.label}]" if job.label else ""
    ms = elapsed * 1000
    if outcome.failure is None:
        rows = "" if outcome.row_count is None else f", {outcome.row_count} row(s)"
        job_logger.info(
            "job %s%s stopped in %.1f ms: %s%s", job.id, label, ms, outcome.command_tag or "-", rows
        )
    else:
        log: Callable[..., None] = (
            job_logger.info if outcome.state == "canceled" else job_logger.warning
        )
        log(
            "job %s%s %s in %.1f ms: %s %s",
            job.id,
            label,
            outcome.state,
            ms,
            outcome.failure.sqlstate,
            outcome.failure.message,
        )
