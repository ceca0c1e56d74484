"""Crash recovery: jobs whose worker died end ``error`` / 08006, never ``running`` forever.

Any pool runs this with every heartbeat, and ``wait()`` runs it while it waits on a running job,
so a job is resolved even when no pool is left alive.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from .conf import app_settings
from .events import EVENT_COLUMNS, PUBLISH_FROM_J

logger = logging.getLogger("pgbackground.recovery")

LOST_MESSAGE = "lost connection to worker process"

_RECOVER_SQL = f"""
WITH dead AS (
    UPDATE pgbackground_worker SET stopped_at = clock_timestamp(),
        stop_reason = 'lost: no heartbeat for ' || %(after)s || ' s'
    WHERE stopped_at IS NULL
      AND heartbeat_at < clock_timestamp() - make_interval(secs => %(after)s)
    RETURNING id
), j AS (
    UPDATE pgbackground_job SET
        state = 'error', finished_at = clock_timestamp(),
        sql = CASE WHEN %(redact)s
                   THEN '-- SQL redacted after the run (PGBACKGROUND["REDACT_SQL"]): '
                        || length(sql) || ' characters'
                   ELSE sql END,
        error_sqlstate = '08006', error_message = '{LOST_MESSAGE}',
        error_detail = 'Worker ' || coalesce(worker_id::text, '?')
            || ' stopped sending heartbeats while the job was running.',
        error_hint = 'Whatever the job did was rolled back unless it had already committed.',
        event_seq = event_seq + 1
    WHERE state = 'running' AND (
        worker_id IS NULL
        OR worker_id IN (SELECT id FROM dead)
        OR worker_id IN (SELECT id FROM pgbackground_worker WHERE stopped_at IS NOT NULL))
    RETURNING {EVENT_COLUMNS}, worker_id, backend_pid
), chunks AS (
    DELETE FROM pgbackground_jobresultchunk c USING j WHERE c.job_id = j.id
)
{PUBLISH_FROM_J}
"""

# Backends of dead workers that are still running a job's SQL (kill -9 of the pool leaves them
# until they notice the client is gone): terminated where this login is allowed to.
_TERMINATE_SQL = """
SELECT a.pid, pg_terminate_backend(a.pid)
FROM pg_stat_activity a
JOIN pgbackground_worker w
  ON a.application_name LIKE 'pgbackground w' || w.id || ' %'
WHERE w.stopped_at IS NOT NULL
  AND a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND (pg_has_role(a.usesysid, 'MEMBER')
       OR (pg_has_role('pg_signal_backend', 'MEMBER')
           AND NOT (SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid)))
"""


def recover_lost_workers(conn: psycopg.Connection[Any], *, terminate: bool = False) -> list[int]:
    """Mark dead workers stopped and their running jobs lost (08006); the ids of those jobs."""
    after = float(app_settings.WORKER_LOST_AFTER)
    rows = conn.execute(
        _RECOVER_SQL, {"after": after, "redact": bool(app_settings.REDACT_SQL)}
    ).fetchall()
    for job_id, _state, *_ in rows:
        logger.warning(
            "job %s error 08006: %s (its worker stopped heartbeating)", job_id, LOST_MESSAGE
        )
    if terminate:
        terminate_orphan_backends(conn)
    return [r[0] for r in rows]


def terminate_orphan_backends(conn: psycopg.Connection[Any]) -> list[int]:
    """Terminate job backends left behind by stopped workers; the pids terminated."""
    try:
        rows = conn.execute(_TERMINATE_SQL).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return []
    pids = [pid for pid, ok in rows if ok]
    for pid in pids:
        logger.warning("terminated backend %s left running by a dead worker", pid)
    return pids
