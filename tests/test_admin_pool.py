"""The admin against a real ``runworkers`` pool: launch from the form, result preview and CSV
(which leave the result unconsumed), cancel from the job page, live pg_stat_activity."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection
from django.test import Client

from pgbackground.db import connection_params
from pgbackground.handles import Handle
from pgbackground.models import Job
from tests.admin_support import ADD, job_url, make_user
from tests.helpers import wait_until

pytestmark = pytest.mark.pool


def wait_for(check: Callable[[], object], timeout: float = 30.0) -> object:
    """Re-check a job's recorded state until ``check`` holds (a deadline, not a sleep)."""
    return wait_until(check, timeout=timeout, interval=0.05)


@pytest.fixture
def owner_client():
    user = make_user("owner", "view_job", "launch_job")
    c = Client()
    c.force_login(user)
    c.user = user
    return c


def handle(job_id: int) -> Handle:
    job = Job.objects.get(pk=job_id)
    return Handle(job.pk, job.cookie)


def test_launch_from_form_preview_and_csv_do_not_consume(pool, owner_client):
    sql = (
        "SELECT g AS n, 'row ' || g AS label, CASE WHEN g % 2 = 0 THEN NULL ELSE g * 1.5 END"
        " AS half, '{\"a\": 1}'::jsonb AS doc FROM generate_series(1, 250) g"
    )
    r = owner_client.post(ADD, {"sql": sql, "label": "report"})
    job_id = int(r["Location"].rstrip("/").split("/")[-2])
    h = handle(job_id)
    assert h.wait(timeout=30)
    page = owner_client.get(job_url(job_id)).content.decode()
    assert "pgb-state-stopped" in page
    assert '<span class="pgb-type">integer</span>' in page
    assert '<span class="pgb-type">numeric</span>' in page
    assert '<span class="pgb-type">jsonb</span>' in page
    assert "row 1" in page and "Showing the first 100 of 250 rows" in page
    assert '<span class="pgb-null">NULL</span>' in page
    resp = owner_client.get(job_url(job_id, "csv/"))
    assert resp.status_code == 200 and resp.streaming
    assert resp["Content-Disposition"] == f'attachment; filename="pgbackground-job-{job_id}.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(resp.streaming_content).decode())))
    assert rows[0] == ["n", "label", "half", "doc"]
    assert len(rows) == 251
    assert rows[1] == ["1", "row 1", "1.5", '{"a": 1}'] and rows[2][2] == ""
    # Neither the preview nor the download consumed the result.
    result = h.result()
    assert len(result.rows) == 250 and result.rows[0][0] == 1
    page = owner_client.get(job_url(job_id)).content.decode()
    assert "fetched through its handle" in page
    assert owner_client.get(job_url(job_id, "csv/")).status_code == 404


def test_cancel_running_job_from_its_page(pool, owner_client):
    r = owner_client.post(
        ADD,
        {
            "sql": "SELECT pgbackground_progress(10, 'sleeping'); SELECT pg_sleep(120)",
            "label": "long",
        },
    )
    job_id = int(r["Location"].rstrip("/").split("/")[-2])
    wait_for(lambda: Job.objects.get(pk=job_id).progress_pct == 10)
    state = owner_client.get(job_url(job_id, "state/")).json()
    assert state["state"] == "running" and state["pct"] == 10 and state["message"] == "sleeping"
    page = owner_client.get(job_url(job_id)).content.decode()
    assert 'id="pgb-activity"' in page and "PgSleep" in page
    r = owner_client.post(job_url(job_id, "cancel/"))
    assert r.status_code == 302
    assert handle(job_id).wait(timeout=30)
    job = Job.objects.get(pk=job_id)
    assert job.state in ("canceled", "error") and job.error_sqlstate == "57014"
    page = owner_client.get(job_url(job_id)).content.decode()
    assert "57014" in page and "query_canceled" in page
    assert 'id="pgb-cancel-form"' not in page


def test_live_view_shows_the_blocking_pid(pool, owner_client):
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE admin_lock_probe (id int)")
    blocker = psycopg.connect(**connection_params("default"), autocommit=True)
    try:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE admin_lock_probe IN ACCESS EXCLUSIVE MODE")
        r = owner_client.post(ADD, {"sql": "SELECT count(*) FROM admin_lock_probe"})
        job_id = int(r["Location"].rstrip("/").split("/")[-2])

        def blocked() -> object:
            act = owner_client.get(job_url(job_id, "state/")).json()["activity"]
            return act if act and act["blocking_pids"] else None

        act = wait_for(blocked)
        assert act["blocking_pids"] == [blocker.info.backend_pid]  # type: ignore[index]
        assert act["wait_event_type"] == "Lock"  # type: ignore[index]
        page = owner_client.get(job_url(job_id)).content.decode()
        assert str(blocker.info.backend_pid) in page and 'id="pgb-blockers"' in page
        assert "hidden" in page  # an owner does not see other sessions' query text
        blocker.execute("ROLLBACK")
        assert handle(job_id).wait(timeout=30)
        assert Job.objects.get(pk=job_id).state == "stopped"
    finally:
        blocker.close()
