"""Test helpers for the CLI and purge tests: job rows in any state, and waiting on job states
through the pool's NOTIFY events (no sleeps)."""

from __future__ import annotations

import time
from collections.abc import Collection
from datetime import timedelta
from typing import Any

import psycopg
from django.utils import timezone

from pgbackground.db import connection_params, models_alias
from pgbackground.events import EVENTS_CHANNEL
from pgbackground.launcher import new_cookie
from pgbackground.models import Job, JobResultChunk


def make_job(
    state: str = "stopped",
    *,
    owner: Any = None,
    finished_ago: timedelta | None = timedelta(days=60),
    run: timedelta | None = timedelta(seconds=2),
    sql: str = "SELECT 1",
    **fields: Any,
) -> Job:
    """A job row as the pool would leave it (finished ``finished_ago`` ago after ``run``)."""
    now = timezone.now()
    finished = None
    started = None
    if state in ("stopped", "canceled", "error") and finished_ago is not None:
        finished = now - finished_ago
        started = None if run is None else finished - run
    elif state == "running":
        started = now - (run or timedelta(0))
    fields.setdefault("max_result_bytes", 1 << 20)
    return Job.objects.create(
        cookie=new_cookie(), sql=sql, state=state, owner=owner, started_at=started,
        finished_at=finished, **fields,
    )


def add_chunks(job: Job, n: int = 2, size: int = 10) -> None:
    for seq in range(n):
        JobResultChunk.objects.create(job=job, result_set=0, seq=seq, nrows=1, data=b"x" * size)


def wait_for_states(
    ids: Collection[int], states: Collection[str], timeout: float = 30.0
) -> dict[int, str]:
    """Block until every job in ``ids`` is in one of ``states`` (woken by the pool's events)."""
    params = connection_params(models_alias())
    with psycopg.connect(autocommit=True, **params) as conn:
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        deadline = time.monotonic() + timeout
        while True:
            rows = dict(conn.execute(
                "SELECT id, state FROM pgbackground_job WHERE id = ANY(%s)", [list(ids)]
            ).fetchall())
            if all(rows.get(i) in states for i in ids):
                return rows
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"jobs {sorted(ids)} not in {sorted(states)}: {rows}")
            for _n in conn.notifies(timeout=remaining, stop_after=1):
                pass

