"""Exactly once under contention and under load, with real pools (issue 5): two and three
pools racing over 5,000 queued jobs, and 20 client threads launching 10,000 jobs while a pool
runs them. Every job's side effect is a row; the rows are counted.

Figures (jobs/s, jobs per pool) are printed after the module (tests.reliability.record).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

import pgbackground as pgb
from pgbackground.db import discard_launcher_connection
from tests.helpers import sql
from tests.reliability import (
    counts,
    print_figures,  # noqa: F401 - module fixture, used below
    record,
    wait_terminal,
)

pytestmark = [
    pytest.mark.pool,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("print_figures"),
]


@pytest.fixture
def effects():
    sql("DROP TABLE IF EXISTS pgbt_effects")
    sql("CREATE TABLE pgbt_effects (n bigint)")  # no unique key: a duplicate would show
    yield "pgbt_effects"
    sql("DROP TABLE IF EXISTS pgbt_effects")


def in_threads(n_threads: int, work) -> list:
    """Run ``work(i)`` for i in range(n_threads), one thread each; their results, in order.
    Each thread closes its own connections when done."""

    def run(i: int):
        try:
            return work(i)
        finally:
            discard_launcher_connection()
            connection.close()

    with ThreadPoolExecutor(n_threads) as ex:
        return list(ex.map(run, range(n_threads)))


def jobs_per_second(ids: list[int]) -> float:
    """Jobs finished per second, from the first claim to the last outcome (database clock)."""
    ((span,),) = sql(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8"
        " FROM pgbackground_job WHERE id = ANY(%s)",
        [ids],
    )
    return round(len(ids) / span, 1)


@pytest.mark.parametrize("n_pools", [2, 3])
def test_pools_racing_over_5000_queued_jobs_run_each_exactly_once(start_pool, effects, n_pools):
    n_jobs = 5000
    per_thread = n_jobs // 4
    handles = [
        h
        for batch in in_threads(
            4,
            lambda t: [
                pgb.submit(f"INSERT INTO pgbt_effects VALUES ({t * per_thread + i})")
                for i in range(per_thread)
            ],
        )
        for h in batch
    ]
    ids = [h.id for h in handles]
    assert sql("SELECT count(*) FROM pgbackground_job WHERE state = 'queued'") == [(n_jobs,)]
    # All pools start at once over the full queue.
    with ThreadPoolExecutor(n_pools) as ex:
        pools = list(ex.map(lambda _: start_pool("--concurrency", "2"), range(n_pools)))
    states = wait_terminal(ids, timeout=300)
    assert set(states.values()) == {"stopped"}
    assert sql("SELECT count(*), count(DISTINCT n) FROM pgbt_effects") == [(n_jobs, n_jobs)]
    per_pool = dict(
        sql(
            "SELECT worker_id, count(*) FROM pgbackground_job WHERE id = ANY(%s)"
            " GROUP BY worker_id",
            [ids],
        )
    )
    assert set(per_pool) == {p.worker_id for p in pools}  # every pool took part
    for p in pools:
        assert "unexpected error" not in p.output and "Traceback" not in p.output
    record(f"race_{n_pools}_pools.jobs_per_pool", sorted(per_pool.values(), reverse=True))
    record(f"race_{n_pools}_pools.jobs_per_s", jobs_per_second(ids))


def test_20_threads_launch_10000_jobs_while_the_pool_runs_them(start_pool, effects):
    """Every 50th job fails on its own (division by zero, 22012); half are submit()ted. No job
    is lost or run twice, and no job fails with anything but its own error."""
    n_threads, per_thread = 20, 500
    pool = start_pool("--concurrency", "4")
    failures: list[BaseException] = []
    lock = threading.Lock()

    def client(t: int) -> list[tuple[int, int]]:
        out = []
        try:
            for i in range(per_thread):
                n = t * per_thread + i
                text = f"INSERT INTO pgbt_effects VALUES ({n}); SELECT 1 / {int(n % 50 != 0)}"
                h = (pgb.launch if n % 2 else pgb.submit)(text)
                out.append((n, h.id))
        except BaseException as exc:
            with lock:
                failures.append(exc)
        return out

    t0 = time.monotonic()
    launched = [pair for batch in in_threads(n_threads, client) for pair in batch]
    launch_s = time.monotonic() - t0
    assert failures == []
    assert len(launched) == n_threads * per_thread
    ids = [job_id for _, job_id in launched]
    assert len(set(ids)) == len(ids)
    wait_terminal(ids, timeout=300)
    total_s = time.monotonic() - t0
    rows = {
        r[0]: r[1:]
        for r in sql(
            "SELECT id, state, error_sqlstate FROM pgbackground_job WHERE id = ANY(%s)", [ids]
        )
    }
    assert len(rows) == len(ids)  # none lost
    for n, job_id in launched:
        state, sqlstate = rows[job_id]
        expected = ("stopped", "") if n % 50 else ("error", "22012")
        assert (state, sqlstate) == expected, (n, job_id, state, sqlstate)
    ok = len(ids) - len(ids) // 50
    assert sql("SELECT count(*), count(DISTINCT n) FROM pgbt_effects") == [(ok, ok)]
    assert sql("SELECT count(*) FROM pgbt_effects WHERE n % 50 = 0") == [(0,)]
    assert "unexpected error" not in pool.output and "Traceback" not in pool.output
    record("load.jobs", {"threads": n_threads, "jobs": len(ids), "own_errors": len(ids) // 50})
    record("load.outcomes", counts(v[0] for v in rows.values()))
    record("load.launches_per_s", round(len(ids) / launch_s, 1))
    record("load.jobs_per_s_first_claim_to_last_outcome", jobs_per_second(ids))
    record("load.jobs_per_s_first_launch_to_all_done", round(len(ids) / total_s, 1))
