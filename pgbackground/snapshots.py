"""The current state of jobs as the JSON messages live clients receive.

One shape for every way a browser learns about a job: the websocket snapshot on (re)connect,
the fuller message sent on a state change, and the JSON polling fallback. Live events from
``pgbackground_events`` carry only ``id, state, pct, message, seq``; the other keys appear when a
snapshot is read from the table, and clients merge them by id (dropping any ``seq`` lower than
the one they hold).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from .events import EVENT_MESSAGE_CHARS

TERMINAL_STATES = ("stopped", "canceled", "error")
# "Queued or running" as two equalities: each matches a partial index (pgb_job_queued_idx,
# pgb_job_running_idx) and PostgreSQL ORs their bitmaps. ``state IN ('queued', 'running')``
# implies neither index's predicate and scans the table (1,000,000 jobs: 96 ms, not 0.03 ms).
ACTIVE_CONDITION = "(state = 'queued' OR state = 'running')"
# Most snapshots a single request (feed connect, resync, ``snapshot`` message) returns.
MAX_SNAPSHOT_JOBS = 500

# Columns read for a snapshot; ``owner_id`` and ``cookie`` are for access checks and never sent.
_COLUMNS = f"""
    id, state, progress_pct, left(progress_message, {EVENT_MESSAGE_CHARS}), event_seq, label,
    created_at, started_at, finished_at, progress_at,
    extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at),
    row_count, error_sqlstate, left(error_message, 500),
    jsonb_array_length(notices) + notices_dropped, cancel_requested_at IS NOT NULL,
    owner_id, cookie
"""

# Jobs by id (``%(ids)s``), optionally only one owner's (``%(owner)s``, NULL = anyone's).
BY_IDS_SQL = f"""
SELECT {_COLUMNS} FROM pgbackground_job
WHERE id = ANY(%(ids)s::bigint[]) AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)
ORDER BY id DESC LIMIT {MAX_SNAPSHOT_JOBS}
"""

# A feed's snapshot: active jobs and jobs finished since ``%(since)s``, newest first. Each of
# the three arms matches a partial index (finished: pgb_job_finished_idx), so the table is not
# scanned (1,000,000 jobs: 0.2 ms, against 103 ms for ``state IN (...) OR finished_at >= ...``).
FEED_SQL = f"""
SELECT {_COLUMNS} FROM pgbackground_job
WHERE ({ACTIVE_CONDITION}
       OR (state IN ('stopped', 'canceled', 'error') AND finished_at >= %(since)s))
  AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)
ORDER BY id DESC LIMIT {MAX_SNAPSHOT_JOBS}
"""


def state_label(state: str) -> str:
    """The state's name for people (translated)."""
    from .models import JobState

    try:
        return str(JobState(state).label)
    except ValueError:
        return state


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class Snapshot:
    """One row of a snapshot query: the message to send plus what access checks need."""

    __slots__ = ("cookie", "message", "owner_id")

    def __init__(self, row: Sequence[Any]) -> None:
        (
            job_id, state, pct, message, seq, label, created, started, finished, progress_at,
            duration, row_count, sqlstate, error_message, notices, cancel_requested, owner_id,
            cookie,
        ) = row
        self.owner_id: int | None = owner_id
        self.cookie: int = cookie
        self.message: dict[str, Any] = {
            "type": "snapshot",
            "id": job_id,
            "state": state,
            "pct": pct,
            "message": message or "",
            "seq": seq,
            "label": label,
            "created_at": _iso(created),
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "progress_at": _iso(progress_at),
            "duration": None if duration is None else round(float(duration), 3),
            "row_count": row_count,
            "error": {"sqlstate": sqlstate, "message": error_message} if sqlstate else None,
            "notices_count": notices or 0,
            "cancel_requested": bool(cancel_requested),
            "terminal": state in TERMINAL_STATES,
            "state_label": state_label(state),
        }

    @property
    def id(self) -> int:
        return int(self.message["id"])

    @property
    def seq(self) -> int:
        return int(self.message["seq"])


def by_ids(
    conn: psycopg.Connection[Any], ids: Iterable[int], owner_id: int | None = None
) -> list[Snapshot]:
    """Snapshots of the jobs ``ids`` (only ``owner_id``'s when given), newest first."""
    wanted = sorted({int(i) for i in ids})[-MAX_SNAPSHOT_JOBS:]
    if not wanted:
        return []
    rows = conn.execute(BY_IDS_SQL, {"ids": wanted, "owner": owner_id}).fetchall()
    return [Snapshot(r) for r in rows]


async def aby_ids(
    conn: psycopg.AsyncConnection[Any], ids: Iterable[int], owner_id: int | None = None
) -> list[Snapshot]:
    """:func:`by_ids` on an asyncio connection."""
    wanted = sorted({int(i) for i in ids})[-MAX_SNAPSHOT_JOBS:]
    if not wanted:
        return []
    cur = await conn.execute(BY_IDS_SQL, {"ids": wanted, "owner": owner_id})
    return [Snapshot(r) for r in await cur.fetchall()]


async def afeed(
    conn: psycopg.AsyncConnection[Any], since: datetime, owner_id: int | None = None
) -> list[Snapshot]:
    """Active jobs and those finished since ``since`` (one owner's when given), newest first."""
    cur = await conn.execute(FEED_SQL, {"since": since, "owner": owner_id})
    return [Snapshot(r) for r in await cur.fetchall()]

