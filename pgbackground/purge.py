"""Purging: delete old finished jobs (their counters move into the statistics archive), drop
stored results past their retention, and forget stopped workers.

Everything is plain SQL in batches, each batch one statement and so one short transaction on
the autonomous launcher connection: a purge of millions of jobs never holds one huge
transaction, never blocks the pool (rows locked by someone else are skipped, and picked up by
the next purge), and :func:`pgbackground.stats` reads the same numbers before, during and after
it. Queued and running jobs are never touched.

The CLI (``manage.py pgbackground purge``) and the admin call :func:`purge`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .conf import app_settings
from .db import launcher_connection

DEFAULT_BATCH_SIZE = 10_000
# Jobs whose stored results are dropped per statement (one job's result can be many 1 MB chunks).
RESULT_BATCH_JOBS = 100
# Chunks of a consumed result stay this long after result() consumed it: ``Result`` streams them
# after ``result()`` marked the job consumed, and deletes them itself once read to the end.
CONSUMED_RESULT_GRACE = timedelta(hours=1)

_FINISHED = "('stopped', 'canceled', 'error')"

_UNITS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([wdhms])", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``1w``, ``1d12h`` or a bare number of seconds.

    Raises ValueError with a message fit for an operator.
    """
    if not isinstance(text, str):
        raise TypeError(f"duration must be a str, not {type(text).__name__}")
    s = text.strip()
    if _BARE_NUMBER.fullmatch(s):
        return timedelta(seconds=float(s))
    pos, total, parts = 0, 0.0, 0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos and s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2).lower()]
        pos, parts = m.end(), parts + 1
    if parts == 0 or s[pos:].strip():
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit (30d, 12h, 90m, 45s, 1w,"
            " or combined like 1d12h) or a bare number of seconds"
        )
    if total > 1e9 * 86400:  # timedelta's own limit is ~2.7e6 years; refuse long before
        raise ValueError(f"invalid duration {text!r}: too long")
    return timedelta(seconds=total)


def retention(name: str) -> timedelta | None:
    """A retention setting (``JOB_RETENTION`` / ``RESULT_RETENTION``) as a timedelta; None =
    keep forever."""
    value = getattr(app_settings, name)
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    return timedelta(seconds=float(value))


@dataclass
class PurgeReport:
    """What a purge removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    job_cutoff: datetime | None
    result_cutoff: datetime | None
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    # Result chunks deleted with the purged jobs (a result kept in a job's row counts as one).
    job_chunks: int = 0
    job_chunk_bytes: int = 0
    # Jobs (kept) whose stored result was dropped, and the chunks that went (likewise).
    results_dropped: int = 0
    result_chunks: int = 0
    result_chunk_bytes: int = 0
    workers: int = 0
    batches: int = 0

    @property
    def jobs(self) -> int:
        return sum(self.jobs_by_state.values())


# --- jobs --------------------------------------------------------------------------------------

# Bytes of a stored chunk row (alias ``c``) and of a result kept in a job's row (alias ``j``;
# NULL when there is none), as purge reports count them.
_CHUNK_SIZE = "octet_length(c.data) + octet_length(c.nulls)"
_IN_ROW_SIZE = "octet_length(j.result_data) + octet_length(j.result_nulls)"

# One batch: lock finished jobs past the cut-off (skipping rows someone else holds), delete
# their result chunks and the jobs, and add their counters to the archive, in one statement.
# The counters follow stats.py's definitions exactly, so stats() is unchanged by a purge.
def _delete_jobs_sql(victims: str) -> str:
    """Delete the finished jobs a ``victims`` query selects (and locks), archiving their counts."""
    return f"""
WITH victims AS ({victims}), chunks AS (
    DELETE FROM pgbackground_jobresultchunk c USING victims v WHERE c.job_id = v.id
    RETURNING {_CHUNK_SIZE} AS size
), gone AS (
    DELETE FROM pgbackground_job j USING victims v
    WHERE j.id = v.id AND j.state IN {_FINISHED}
    RETURNING j.owner_id, j.state, j.started_at, j.finished_at,
              {_IN_ROW_SIZE} AS in_row_size
), per_owner AS (
    SELECT owner_id,
           count(*) AS launched,
           count(*) FILTER (WHERE state = 'stopped') AS completed,
           count(*) FILTER (WHERE state = 'error') AS failed,
           count(*) FILTER (WHERE state = 'canceled') AS canceled,
           count(*) FILTER (WHERE started_at IS NOT NULL AND finished_at IS NOT NULL) AS timed,
           coalesce(sum(extract(epoch FROM finished_at - started_at) * 1000)
                    FILTER (WHERE started_at IS NOT NULL AND finished_at IS NOT NULL), 0) AS run_ms
    FROM gone GROUP BY owner_id
), archived AS (
    INSERT INTO pgbackground_jobstatsarchive AS a
        (owner_pk, launched, completed, failed, canceled, timed_runs, total_run_ms)
    SELECT owner_id, launched, completed, failed, canceled, timed, run_ms FROM per_owner
    ON CONFLICT ON CONSTRAINT pgb_stats_one_ownerless_row DO UPDATE SET
        launched = a.launched + EXCLUDED.launched,
        completed = a.completed + EXCLUDED.completed,
        failed = a.failed + EXCLUDED.failed,
        canceled = a.canceled + EXCLUDED.canceled,
        timed_runs = a.timed_runs + EXCLUDED.timed_runs,
        total_run_ms = a.total_run_ms + EXCLUDED.total_run_ms
    RETURNING 1
)
SELECT (SELECT count(*) FROM victims),
       (SELECT coalesce(sum(completed), 0) FROM per_owner),
       (SELECT coalesce(sum(failed), 0) FROM per_owner),
       (SELECT coalesce(sum(canceled), 0) FROM per_owner),
       (SELECT count(*) FROM chunks) + (SELECT count(in_row_size) FROM gone),
       (SELECT coalesce(sum(size), 0) FROM chunks)
           + (SELECT coalesce(sum(in_row_size), 0) FROM gone),
       (SELECT count(*) FROM archived)
"""


_PURGE_JOBS_SQL = _delete_jobs_sql(
    f"SELECT id FROM pgbackground_job WHERE state IN {_FINISHED} AND finished_at < %(cutoff)s"
    " ORDER BY finished_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED"
)
_DELETE_IDS_SQL = _delete_jobs_sql(
    f"SELECT id FROM pgbackground_job WHERE id = ANY(%(ids)s) AND state IN {_FINISHED}"
    " FOR UPDATE"
)


def delete_finished_jobs(ids: list[int]) -> int:
    """Delete the finished jobs among ``ids`` with their results, keeping their counts in the
    statistics archive (the admin's "delete finished" action); how many were deleted."""
    if not ids:
        return 0
    row = launcher_connection().execute(_DELETE_IDS_SQL, {"ids": ids}).fetchone()
    return int(row[0]) if row else 0

_COUNT_JOBS_SQL = f"""
SELECT state, count(*) FROM pgbackground_job
WHERE state IN {_FINISHED} AND finished_at < %(cutoff)s
GROUP BY state
"""

# Chunk rows, and results kept in job rows (one chunk each).
_COUNT_JOB_CHUNKS_SQL = f"""
SELECT count(*), coalesce(sum(size), 0) FROM (
    SELECT {_CHUNK_SIZE} AS size
    FROM pgbackground_jobresultchunk c JOIN pgbackground_job j ON j.id = c.job_id
    WHERE j.state IN {_FINISHED} AND j.finished_at < %(cutoff)s
    UNION ALL
    SELECT {_IN_ROW_SIZE}
    FROM pgbackground_job j
    WHERE j.state IN {_FINISHED} AND j.finished_at < %(cutoff)s AND j.result_data IS NOT NULL
) AS stored
"""


def purge_jobs(
    conn: psycopg.Connection[Any], cutoff: datetime, report: PurgeReport, batch_size: int
) -> None:
    """Delete finished jobs that finished before ``cutoff``, a batch per transaction."""
    if report.dry_run:
        for state, n in conn.execute(_COUNT_JOBS_SQL, {"cutoff": cutoff}).fetchall():
            report.jobs_by_state[state] = int(n)
        n, size = conn.execute(_COUNT_JOB_CHUNKS_SQL, {"cutoff": cutoff}).fetchone() or (0, 0)
        report.job_chunks += int(n)
        report.job_chunk_bytes += int(size)
        return
    while True:
        row = conn.execute(_PURGE_JOBS_SQL, {"cutoff": cutoff, "batch": batch_size}).fetchone()
        assert row is not None
        locked, completed, failed, canceled, chunks, size, _ = (int(v) for v in row)
        report.batches += 1
        for state, n in (("stopped", completed), ("error", failed), ("canceled", canceled)):
            if n:
                report.jobs_by_state[state] = report.jobs_by_state.get(state, 0) + n
        report.job_chunks += chunks
        report.job_chunk_bytes += size
        if locked < batch_size:
            return


# --- results -----------------------------------------------------------------------------------

# Finished jobs whose stored result should go: past RESULT_RETENTION, or nobody can read it any
# more (detached, fire-and-forget), or it was consumed (after a grace, see above). The job row
# stays; an unread result that expires marks the job detached, so that result() says the result
# was dropped (JobDetached) instead of returning no rows.
_RESULT_TARGETS = f"""
    SELECT j.id, (j.state = 'stopped' AND NOT j.consumed AND NOT j.detached
                  AND NOT j.fire_and_forget) AS unread,
           {_IN_ROW_SIZE} AS in_row_size
    FROM pgbackground_job j
    WHERE j.state IN {_FINISHED} AND j.id > %(after)s
      AND ((%(cutoff)s::timestamptz IS NOT NULL AND j.finished_at < %(cutoff)s)
           OR j.detached OR j.fire_and_forget
           OR (j.consumed AND coalesce(j.consumed_at, j.finished_at) < %(consumed_cutoff)s))
      -- jobs the job purge deletes anyway (it drops their chunks with them)
      AND NOT (%(job_cutoff)s::timestamptz IS NOT NULL AND j.finished_at < %(job_cutoff)s)
      AND (j.result_data IS NOT NULL
           OR EXISTS (SELECT 1 FROM pgbackground_jobresultchunk c WHERE c.job_id = j.id))
"""

_PURGE_RESULTS_SQL = f"""
WITH targets AS (
    {_RESULT_TARGETS}
    ORDER BY j.id
    LIMIT %(batch)s
    FOR UPDATE OF j SKIP LOCKED
), chunks AS (
    DELETE FROM pgbackground_jobresultchunk c USING targets t WHERE c.job_id = t.id
    RETURNING {_CHUNK_SIZE} AS size
), marked AS (
    UPDATE pgbackground_job j SET result_bytes = 0, detached = j.detached OR t.unread,
        result_data = NULL, result_nulls = NULL
    FROM targets t WHERE j.id = t.id
    RETURNING j.id, t.in_row_size
)
SELECT (SELECT count(*) FROM targets), (SELECT max(id) FROM targets),
       (SELECT count(*) FROM chunks) + (SELECT count(in_row_size) FROM marked),
       (SELECT coalesce(sum(size), 0) FROM chunks)
           + (SELECT coalesce(sum(in_row_size), 0) FROM marked),
       (SELECT count(*) FROM marked)
"""

_COUNT_RESULTS_SQL = f"""
WITH targets AS ({_RESULT_TARGETS}), stored AS (
    SELECT {_CHUNK_SIZE} AS size
    FROM targets t JOIN pgbackground_jobresultchunk c ON c.job_id = t.id
    UNION ALL
    SELECT in_row_size FROM targets WHERE in_row_size IS NOT NULL
)
SELECT (SELECT count(*) FROM targets), count(*), coalesce(sum(size), 0) FROM stored
"""


def purge_results(
    conn: psycopg.Connection[Any],
    cutoff: datetime | None,
    consumed_cutoff: datetime,
    report: PurgeReport,
    batch_jobs: int = RESULT_BATCH_JOBS,
    job_cutoff: datetime | None = None,
) -> None:
    """Drop the stored results that nobody will read (see ``_RESULT_TARGETS``)."""
    params: dict[str, Any] = {"cutoff": cutoff, "consumed_cutoff": consumed_cutoff, "after": 0,
                              "job_cutoff": job_cutoff}
    if report.dry_run:
        row = conn.execute(_COUNT_RESULTS_SQL, params).fetchone() or (0, 0, 0)
        report.results_dropped += int(row[0])
        report.result_chunks += int(row[1])
        report.result_chunk_bytes += int(row[2])
        return
    while True:
        row = conn.execute(_PURGE_RESULTS_SQL, {**params, "batch": batch_jobs}).fetchone()
        assert row is not None
        n, last_id, chunks, size, _ = row
        report.batches += 1
        report.results_dropped += int(n)
        report.result_chunks += int(chunks)
        report.result_chunk_bytes += int(size)
        if int(n) < batch_jobs:
            return
        params["after"] = int(last_id)


# --- workers -----------------------------------------------------------------------------------

# Workers stopped (or silent for longer than WORKER_LOST_AFTER) before the cut-off, that no
# remaining job points at.
_WORKERS_WHERE = """
    WHERE (w.stopped_at < %(cutoff)s
           OR (w.stopped_at IS NULL AND w.heartbeat_at < %(cutoff)s
               AND w.heartbeat_at < clock_timestamp() - make_interval(secs => %(lost)s)))
      AND NOT EXISTS (SELECT 1 FROM pgbackground_job j WHERE j.worker_id = w.id)
"""


def purge_workers(conn: psycopg.Connection[Any], cutoff: datetime, report: PurgeReport) -> None:
    params = {"cutoff": cutoff, "lost": float(app_settings.WORKER_LOST_AFTER)}
    if report.dry_run:
        sql = f"SELECT count(*) FROM pgbackground_worker w {_WORKERS_WHERE}"
    else:
        sql = (f"WITH d AS (DELETE FROM pgbackground_worker w {_WORKERS_WHERE} RETURNING 1)"
               " SELECT count(*) FROM d")
    row = conn.execute(sql, params).fetchone()
    report.workers += int(row[0]) if row else 0


# --- all of it ---------------------------------------------------------------------------------

_DEFAULT: Any = object()


def _cutoff(conn: psycopg.Connection[Any], age: timedelta) -> datetime:
    """now() - age, by the database's clock (the one that stamped finished_at)."""
    row = conn.execute(
        "SELECT clock_timestamp() - make_interval(secs => %s)", [age.total_seconds()]
    ).fetchone()
    assert row is not None
    return row[0]


def purge(
    older_than: timedelta | float | None = _DEFAULT,
    *,
    results_older_than: timedelta | float | None = _DEFAULT,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PurgeReport:
    """Purge finished jobs older than ``older_than`` (default ``JOB_RETENTION``; None = keep
    jobs), results older than ``results_older_than`` (default ``RESULT_RETENTION``; None = keep
    unread results) and unreadable results, and old stopped workers.

    Ages are timedeltas or seconds, counted from the job's finish. Returns a
    :class:`PurgeReport`; with ``dry_run`` nothing changes and the report says what would go.
    """
    job_age = _as_age(retention("JOB_RETENTION") if older_than is _DEFAULT else older_than,
                      "older_than")
    result_age = _as_age(
        retention("RESULT_RETENTION") if results_older_than is _DEFAULT else results_older_than,
        "results_older_than",
    )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")
    conn = launcher_connection()
    job_cutoff = None if job_age is None else _cutoff(conn, job_age)
    result_cutoff = None if result_age is None else _cutoff(conn, result_age)
    report = PurgeReport(dry_run=dry_run, job_cutoff=job_cutoff, result_cutoff=result_cutoff)
    if job_cutoff is not None:
        purge_jobs(conn, job_cutoff, report, batch_size)
    purge_results(conn, result_cutoff, _cutoff(conn, CONSUMED_RESULT_GRACE), report,
                  batch_jobs=max(1, min(RESULT_BATCH_JOBS, batch_size)), job_cutoff=job_cutoff)
    if job_cutoff is not None:
        purge_workers(conn, job_cutoff, report)
    return report


def _as_age(value: timedelta | float | None, name: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        age = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite number of seconds")
        age = timedelta(seconds=value)
    else:
        raise TypeError(f"{name} must be a timedelta, a number of seconds or None,"
                        f" not {type(value).__name__}")
    if age < timedelta(0):
        raise ValueError(f"{name} must not be negative")
    return age
