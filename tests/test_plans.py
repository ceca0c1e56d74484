"""The per-job statements find their job by primary key, whatever the parameters.

Prepared statements run with generic plans after a few executions, planned without the
parameters' values. A partial index whose predicate the WHERE clause implies (running jobs,
queued and running jobs) then looks as cheap as the primary key at an empty table, and is walked
entry by entry, dead ones included, once the queue is busy. This checks the plans, not timings.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from pgbackground import executor, handles, pool, results
from pgbackground.prepared import to_positional
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db(transaction=True)

_INDEX_SCAN = re.compile(r"(?:Index Scan|Index Only Scan) using (\w+)|Bitmap Index Scan on (\w+)")


def generic_plan(sql: str) -> str:
    """EXPLAIN of ``sql`` (psycopg placeholders) as a generic plan, parameters unknown."""
    body, names = to_positional(sql)
    with raw_connection() as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE probe AS {body}")
        nulls = ", ".join(["NULL"] * len(names))
        rows = conn.execute(f"EXPLAIN EXECUTE probe({nulls})").fetchall()
    return "\n".join(r[0] for r in rows)


def job_table_scans(plan: str) -> list[str]:
    """The scans of pgbackground_job in a plan (index names, or 'Seq Scan')."""
    scans = []
    for line in plan.splitlines():
        m = _INDEX_SCAN.search(line)
        index = m and (m.group(1) or m.group(2))
        if index and index.startswith(("pgbackground_job_", "pgb_job_")):
            scans.append(index)
        elif re.search(r"Seq Scan on pgbackground_job\b", line):
            scans.append("Seq Scan")
    return scans


@pytest.fixture(autouse=True)
def busy_table() -> None:
    """A table like a busy deployment's: mostly finished jobs, some queued and running, with
    statistics (an empty table makes every plan a sequential scan)."""
    with raw_connection() as conn:
        conn.execute(
            "INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes, notices,"
            " state) SELECT g, 'SELECT 1', 'r', '{}', 0, '[]',"
            " CASE WHEN g % 50 = 0 THEN 'queued' WHEN g % 50 = 1 THEN 'running'"
            " ELSE 'stopped' END FROM generate_series(1, 20000) g"
        )
        conn.execute("ANALYZE pgbackground_job")


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        ("record the outcome", pool._RECORD_SQL),
        ("record, result in the row", pool._record_sql(in_row=True, claim=False)),
        ("cancel", handles._CANCEL_SQL),
        ("progress", executor._PROGRESS_SQL),
        ("consume the result", handles._CONSUME_SQL),
        ("read the result's chunks", results.FETCH_CHUNKS_SQL),
        ("detach", handles._DETACH_SQL),
    ],
)
def test_per_job_statements_use_the_primary_key(name, sql):
    scans = job_table_scans(generic_plan(sql))
    assert scans, name
    assert set(scans) == {"pgbackground_job_pkey"}, (name, scans)


def test_the_claim_takes_the_oldest_queued_job_by_its_partial_index():
    scans = job_table_scans(generic_plan(pool._CLAIM_SQL))
    assert scans[0] == "pgb_job_queued_idx", scans
    assert "pgbackground_job_pkey" in scans, scans


@pytest.mark.parametrize(
    ("name", "sql"),
    [
        ("claim", pool._CLAIM_SQL),
        ("record and claim", pool._RECORD_AND_CLAIM_SQL),
        ("record and claim, result in the row", pool._record_sql(in_row=True, claim=True)),
    ],
)
def test_the_claim_never_scans_the_whole_table_to_tell_whether_more_are_queued(name, sql):
    # Statistics taken during a burst (most jobs queued) make a sequential scan look cheap for
    # "is another job queued behind this one?"; at run time the burst has been worked off and
    # that scan walks every finished job. Only indexes will do.
    with raw_connection() as conn:
        conn.execute(
            "INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes, notices,"
            " state) SELECT g, 'SELECT 1', 'r', '{}', 0, '[]', 'queued'"
            " FROM generate_series(20001, 80000) g"
        )
        conn.execute("ANALYZE pgbackground_job")
    scans = job_table_scans(generic_plan(sql))
    assert scans and "Seq Scan" not in scans, (name, scans)
    assert "pgb_job_queued_idx" in scans, (name, scans)


def custom_plan(sql: str, params: dict[str, object]) -> str:
    """EXPLAIN of ``sql`` planned with its parameters' values, as an unprepared statement is."""
    with raw_connection() as conn:
        rows = conn.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    "name", ["live feed snapshot", "admin statistics: active jobs", "active jobs (ORM)"]
)
def test_reads_of_active_jobs_use_the_partial_indexes(name):
    """'Queued or running' reads must not scan every finished job (a busy table is mostly
    those): the conditions have to match the partial indexes' predicates."""
    import datetime

    from pgbackground.admin.views import _ACTIVE_SQL
    from pgbackground.models import Job
    from pgbackground.snapshots import FEED_SQL

    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    if name == "active jobs (ORM)":  # the admin's state filter, detach_all/cancel_all
        plan = Job.objects.active().values("id").explain()
    else:
        sql, params = {
            "live feed snapshot": (FEED_SQL, {"since": since, "owner": None}),
            "admin statistics: active jobs": (_ACTIVE_SQL, {"owner": None}),
        }[name]
        plan = custom_plan(sql, params)
    scans = job_table_scans(plan)
    assert scans and "Seq Scan" not in scans, (name, scans)
    assert {"pgb_job_queued_idx", "pgb_job_running_idx"} <= set(scans), (name, scans)


@pytest.mark.parametrize(
    ("column", "value", "domain"),
    [("state", "bogus", "pgbackground_job_state"), ("cookie", 0, "pgbackground_cookie")],
)
def test_the_state_and_the_cookie_are_checked_by_their_domains(column, value, domain):
    """The rules of the former CHECK constraints, on insert and on update (23514)."""
    insert = (
        "INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes, notices, state)"
        " VALUES (%(cookie)s, 'SELECT 1', 'r', '{}', 0, '[]', %(state)s) RETURNING id"
    )
    with raw_connection() as conn:
        good = {"cookie": 7, "state": "queued"}
        with pytest.raises(psycopg.errors.CheckViolation, match=domain):
            conn.execute(insert, {**good, column: value})
        (job_id,) = conn.execute(insert, good).fetchone()
        with pytest.raises(psycopg.errors.CheckViolation, match=domain):
            conn.execute(
                f"UPDATE pgbackground_job SET {column} = %s WHERE id = %s", [value, job_id]
            )
        checks = conn.execute(
            "SELECT count(*) FROM pg_constraint"
            " WHERE conrelid = 'pgbackground_job'::regclass AND contype = 'c'"
        ).fetchone()
    assert checks == (0,)  # none left on the table: each would cost every write of a job
