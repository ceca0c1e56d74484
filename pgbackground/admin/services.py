"""What the admin's buttons and bulk actions do, on top of the library's own operations.

Cancel and detach go through :func:`pgbackground.handles.cancel_ids` / ``detach_ids`` (the same
SQL as ``Handle.cancel()``), launch-again through :func:`pgbackground.launcher.launch`, so the
admin never has rules of its own about job states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import launcher
from ..conf import MAX_CANCEL_GRACE
from ..db import launcher_connection
from ..exceptions import TooManyJobs
from ..handles import cancel_ids, detach_ids

ACTIVE = ("queued", "running")
FINISHED = ("stopped", "canceled", "error")


def cancel_jobs(ids: list[int], grace: float = 0.0) -> list[tuple[int, str]]:
    """Cancel queued/running jobs; ``grace`` seconds (capped like ``Handle.cancel``)."""
    if not ids:
        return []
    return cancel_ids(ids, grace=min(max(0.0, float(grace)), MAX_CANCEL_GRACE))


def detach_jobs(ids: list[int]) -> list[tuple[int, str]]:
    return detach_ids(ids) if ids else []


@dataclass
class RelaunchOutcome:
    launched: list[int] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)


def relaunch(jobs: list[Any], owner: Any) -> RelaunchOutcome:
    """Launch each job's SQL again with its label, settings, timeout, limit and mode.

    The new job runs as the *caller's* role (never the old job's: a role is carried from the
    launcher, not chosen) and is owned by ``owner``. Stops at the owner's MAX_WORKERS limit.
    """
    out = RelaunchOutcome()
    for job in jobs:
        try:
            h = launcher.launch(
                job.sql,
                label=job.label or None,
                timeout=job.timeout,
                gucs=dict(job.gucs or {}),
                owner=owner,
                max_result_bytes=job.max_result_bytes,
                fire_and_forget=job.fire_and_forget,
            )
        except TooManyJobs as exc:
            out.errors.append((job.pk, str(exc)))
            break
        except (TypeError, ValueError) as exc:
            out.errors.append((job.pk, str(exc)))
            continue
        out.launched.append(h.id)
    return out


def delete_finished(ids: list[int]) -> int:
    """Delete the finished jobs among ``ids`` (with their results); how many were deleted.

    Their counts go to the statistics archive, as ``purge`` does: stats() does not change."""
    from ..purge import delete_finished_jobs

    return delete_finished_jobs(ids)


# --- the live PostgreSQL view of a running job -------------------------------------------------

_ACTIVITY_SQL = """
SELECT a.pid, a.state, a.wait_event_type, a.wait_event, pg_blocking_pids(a.pid),
       a.backend_start, a.xact_start, a.query_start, a.state_change, a.application_name,
       a.usename::text, a.backend_xid::text, a.backend_xmin::text
FROM pg_stat_activity a WHERE a.pid = %(pid)s AND a.application_name LIKE %(app)s
"""

_BLOCKERS_SQL = """
SELECT a.pid, a.usename::text, a.application_name, a.state, a.wait_event_type, a.wait_event,
       a.xact_start, left(a.query, 300)
FROM pg_stat_activity a WHERE a.pid = ANY(%(pids)s) ORDER BY a.pid
"""


@dataclass
class Activity:
    pid: int
    state: str | None
    wait_event_type: str | None
    wait_event: str | None
    blocking_pids: list[int]
    backend_start: Any
    xact_start: Any
    query_start: Any
    state_change: Any
    application_name: str
    usename: str | None
    backend_xid: str | None
    backend_xmin: str | None
    blockers: list[dict[str, Any]] = field(default_factory=list)


def job_activity(job: Any, *, with_queries: bool) -> Activity | None:
    """pg_stat_activity of a running job's backend (state, wait event, blockers), or None.

    The backend is matched by pid *and* the worker's application_name, so a recycled pid never
    shows another session. Blockers' query text only goes to ``with_queries`` viewers (it may
    belong to anybody's session).
    """
    if job.state != "running" or not job.backend_pid or not job.worker_id:
        return None
    conn = launcher_connection()
    row = conn.execute(
        _ACTIVITY_SQL, {"pid": job.backend_pid, "app": f"pgbackground w{job.worker_id} %"}
    ).fetchone()
    if row is None:
        return None
    act = Activity(
        pid=row[0],
        state=row[1],
        wait_event_type=row[2],
        wait_event=row[3],
        blocking_pids=list(row[4] or []),
        backend_start=row[5],
        xact_start=row[6],
        query_start=row[7],
        state_change=row[8],
        application_name=row[9],
        usename=row[10],
        backend_xid=row[11],
        backend_xmin=row[12],
    )
    if act.blocking_pids:
        for b in conn.execute(_BLOCKERS_SQL, {"pids": act.blocking_pids}).fetchall():
            act.blockers.append(
                {
                    "pid": b[0],
                    "usename": b[1],
                    "application_name": b[2],
                    "state": b[3],
                    "wait_event_type": b[4],
                    "wait_event": b[5],
                    "xact_start": b[6],
                    "query": b[7] if with_queries else None,
                }
            )
    return act
