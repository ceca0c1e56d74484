"""Every screen of the admin with the test client: list, job page in each state, stats,
workers, the no-worker banner, the JSON state, and the list's speed guards."""

from __future__ import annotations

import datetime
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pgbackground import sqlstates
from pgbackground.admin import paging
from pgbackground.admin.jobs import JobAdmin
from pgbackground.models import Job
from tests.admin_support import JOBS, STATS, WORKERS, job_url, make_job, make_user, make_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def root_client():
    root = make_user("root", superuser=True)
    c = Client()
    c.force_login(root)
    c.user = root
    return c


def test_sqlstate_table():
    assert sqlstates.describe("22012") == "22012 division_by_zero"
    assert sqlstates.condition_name("57014") == "query_canceled"
    assert sqlstates.condition_name("08006") == "connection_failure"
    assert sqlstates.condition_name("42P01") == "undefined_table"
    assert sqlstates.condition_name("40P01") == "deadlock_detected"
    assert sqlstates.condition_name("XX000") == "internal_error"
    assert sqlstates.class_name("23505") == "Integrity Constraint Violation"
    assert sqlstates.describe("ZZ999") == "ZZ999"
    assert sqlstates.describe("") == ""


def test_job_list_columns_badges_and_progress(root_client):
    w = make_worker()
    make_job(
        root_client.user,
        state="running",
        label="halfway",
        progress_pct=50.0,
        progress_message="half",
        worker=w,
        sql="SELECT pg_sleep(100)",
    )
    make_job(
        root_client.user,
        state="error",
        error_sqlstate="22012",
        error_message="division by zero",
        sql="SELECT 1/0",
    )
    make_job(root_client.user, state="stopped", row_count=1234567, command_tag="SELECT 1234567")
    r = root_client.get(JOBS)
    assert r.status_code == 200
    html = r.content.decode()
    assert 'class="pgb-badge pgb-state-running"' in html
    assert 'class="pgb-badge pgb-state-error"' in html
    assert 'title="22012 division_by_zero"' in html
    assert 'style="width: 50.0%"' in html
    assert "1,234,567" in html
    assert "db1:4242" in html
    assert "SELECT pg_sleep(100)" in html
    assert 'data-pgb-live="list"' in html
    for column in (
        "id",
        "label_column",
        "state_column",
        "progress_column",
        "owner_column",
        "sql_column",
        "created_column",
        "started_column",
        "finished_column",
        "duration_column",
        "wait_column",
        "rows_column",
        "command_tag",
        "worker_column",
    ):
        assert f"column-{column}" in html, column


def test_list_query_count_does_not_grow_with_rows(root_client):
    w = make_worker()
    make_job(root_client.user)

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert root_client.get(JOBS).status_code == 200
        return len(ctx.captured_queries)

    few = count()
    other = make_user("other", "view_job")
    for i in range(30):
        make_job(
            other if i % 2 else root_client.user,
            worker=w,
            label=f"l{i % 4}",
            state=["stopped", "error", "running", "queued"][i % 4],
        )
    assert count() == few
    with CaptureQueriesContext(connection) as ctx:
        root_client.get(JOBS)
    sql = " ".join(q["sql"] for q in ctx.captured_queries)
    # No unbounded COUNT(*) of the table, and the page query does not read the whole SQL text.
    assert 'SELECT COUNT(*) AS "__count" FROM "pgbackground_job"' not in sql
    assert "LIMIT 51" in sql  # one page and a row: the list of 31 fits on a page
    for _ in range(60):
        make_job(root_client.user)
    with CaptureQueriesContext(connection) as ctx:
        root_client.get(JOBS)
    assert "LIMIT 10001" in " ".join(q["sql"] for q in ctx.captured_queries)


@pytest.mark.parametrize(("term", "found"), [("no such text", 0), ("needle", 2)])
def test_search_matching_one_page_filters_the_table_once(root_client, term, found):
    for _ in range(60):
        make_job(root_client.user)
    needles = [make_job(root_client.user, sql=f"SELECT 'needle {i}'") for i in range(found)]
    with CaptureQueriesContext(connection) as ctx:
        r = root_client.get(JOBS, {"q": term})
    assert r.status_code == 200
    assert [j.pk for j in r.context["cl"].result_list] == [j.pk for j in reversed(needles)]
    assert r.context["cl"].result_count == found
    scans = [q["sql"] for q in ctx.captured_queries
             if "LIKE" in q["sql"] and '"pgbackground_job"."id" IN (' not in q["sql"]]
    assert len(scans) == 1, scans


def test_estimated_count_paginator(root_client, monkeypatch):
    monkeypatch.setattr(paging, "EXACT_COUNT_LIMIT", 5)
    for _ in range(60):  # more than a page: a list that fits on one is counted as it is read
        make_job(root_client.user)
    with connection.cursor() as cur:
        cur.execute("ANALYZE pgbackground_job")
    r = root_client.get(JOBS)
    cl = r.context["cl"]
    assert cl.paginator.estimated
    assert cl.result_count >= 6
    assert "≈" in r.content.decode()
    # A page past the estimate is empty rather than an error.
    r = root_client.get(JOBS, {"p": "50"})
    assert r.status_code == 200
    # Small lists are counted exactly.
    r = root_client.get(JOBS, {"state": "error"})
    assert r.context["cl"].result_count == 0 and not r.context["cl"].paginator.estimated


def test_filters_search_and_ordering(root_client):
    bob = make_user("bob", "view_job")
    a = make_job(
        root_client.user,
        state="error",
        error_sqlstate="22012",
        error_message="division by zero",
        label="nightly",
        sql="SELECT 1/0",
    )
    b = make_job(bob, state="queued", label="etl", sql="INSERT INTO facts SELECT 1")
    c = make_job(None, state="canceled", error_sqlstate="57014", error_message="canceled")
    d = make_job(root_client.user, state="stopped", detached=True)

    def ids(**params) -> set[int]:
        r = root_client.get(JOBS, params)
        assert r.status_code == 200, params
        return {j.pk for j in r.context["cl"].result_list}

    assert ids(state="active") == {b.pk}
    assert ids(state="failed") == {a.pk, c.pk}
    assert ids(state="error") == {a.pk}
    assert ids(owner="me") == {a.pk, d.pk}
    assert ids(owner=str(bob.pk)) == {b.pk}
    assert ids(owner="none") == {c.pk}
    assert ids(label="etl") == {b.pk}
    assert ids(label="__none__") == {c.pk, d.pk}
    assert ids(flag="detached") == {d.pk}
    assert ids(q="22012") == {a.pk}
    assert ids(q="division_by_zero") == {a.pk}
    assert ids(q="division by") == {a.pk}
    assert ids(q="facts") == {b.pk}
    assert ids(q="nightly") == {a.pk}
    assert ids(q=f"#{c.pk}") == {c.pk}
    assert ids(
        **{"created_at__gte": (timezone.now() - datetime.timedelta(days=1)).isoformat()}
    ) == {a.pk, b.pk, c.pk, d.pk}
    r = root_client.get(JOBS, {"o": "-5"})
    assert r.status_code == 200
    # Filter choices list labels and owners.
    html = root_client.get(JOBS).content.decode()
    assert "?label=etl" in html and "bob" in html


def test_date_hierarchy_drills_down(root_client):
    old = make_job(root_client.user)
    Job.objects.filter(pk=old.pk).update(
        created_at=datetime.datetime(2024, 3, 5, 12, tzinfo=datetime.UTC)
    )
    new = make_job(root_client.user)
    r = root_client.get(JOBS)
    years = [c["title"] for c in r.context["cl"].model_admin and _hierarchy(r)["choices"]]
    assert "2024" in years and str(timezone.localtime().year) in years
    r = root_client.get(JOBS, {"created_at__year": "2024"})
    choices = _hierarchy(r)["choices"]
    assert [c["title"] for c in choices] == ["March 2024"]
    r = root_client.get(JOBS, {"created_at__year": "2024", "created_at__month": "3"})
    assert [c["title"] for c in _hierarchy(r)["choices"]] == ["March 5"]
    assert {j.pk for j in r.context["cl"].result_list} == {old.pk}
    assert new.pk not in {j.pk for j in r.context["cl"].result_list}


def _hierarchy(response):
    return paging.date_hierarchy(response.context["cl"])


def test_error_job_page_shows_sqlstate_condition_and_position(root_client):
    job = make_job(
        root_client.user,
        state="error",
        sql="SELECT 1;\nSELECT nope FROM t",
        error_sqlstate="42703",
        error_message='column "nope" does not exist',
        error_detail="some detail",
        error_hint="Perhaps you meant nop.",
        error_context="PL/pgSQL function f() line 3",
        error_position=18,
        label="typo",
    )
    r = root_client.get(job_url(job.pk))
    html = r.content.decode()
    assert r.status_code == 200
    assert 'id="pgb-error"' in html
    assert "42703" in html and "undefined_column" in html
    assert "Syntax Error or Access Rule Violation" in html
    assert "some detail" in html and "Perhaps you meant nop." in html
    assert "PL/pgSQL function f() line 3" in html
    assert '<mark class="pgb-error-mark" id="pgb-error-position"' in html
    assert ">nope</mark>" in html
    assert "line 2, column 8" in html
    assert f"Job #{job.pk} · typo" in html


def test_notices_read_like_psql(root_client):
    job = make_job(
        root_client.user,
        state="stopped",
        command_tag="VACUUM",
        notices=[
            {
                "severity": "INFO",
                "message": 'vacuuming "public.t"',
                "sqlstate": "00000",
                "detail": None,
                "hint": None,
                "context": None,
            },
            {
                "severity": "WARNING",
                "message": "careful",
                "sqlstate": "01000",
                "detail": "d1",
                "hint": "h1",
                "context": None,
            },
        ],
        notices_dropped=3,
    )
    html = root_client.get(job_url(job.pk)).content.decode()
    assert "INFO:  vacuuming &quot;public.t&quot;" in html
    assert "WARNING:  careful\nDETAIL:  d1\nHINT:  h1" in html
    assert "pgb-notice-WARNING" in html
    assert "3 more dropped" in html


def test_job_page_settings_timeline_and_result_reasons(root_client):
    job = make_job(
        root_client.user,
        state="stopped",
        role="app_user",
        gucs={"work_mem": "64MB", "TimeZone": "UTC"},
        timeout=30.0,
        fire_and_forget=True,
        command_tag="INSERT 0 5",
    )
    html = root_client.get(job_url(job.pk)).content.decode()
    assert "app_user" in html and "work_mem" in html and "64MB" in html
    assert "30.0 s" in html
    assert "fire-and-forget" in html
    assert 'class="pgb-step-queued"' in html and 'class="pgb-step-stopped"' in html
    queued = make_job(root_client.user, state="queued")
    html = root_client.get(job_url(queued.pk)).content.decode()
    assert 'data-pgb-state="queued"' in html and "Waiting for a worker" in html
    assert 'id="pgb-cancel-form"' in html
    consumed = make_job(
        root_client.user,
        state="stopped",
        consumed=True,
        result_columns=[["a", "integer", 23]],
        result_rows=3,
    )
    html = root_client.get(job_url(consumed.pk)).content.decode()
    assert "fetched through its handle" in html
    assert 'id="pgb-csv"' not in html
    canceled = make_job(
        root_client.user,
        state="canceled",
        error_sqlstate="57014",
        error_message="canceling statement due to user request",
    )
    html = root_client.get(job_url(canceled.pk)).content.decode()
    assert "57014" in html and "query_canceled" in html and "pgb-canceled-card" in html


def test_state_json(root_client):
    job = make_job(
        root_client.user,
        state="running",
        progress_pct=25.0,
        progress_message="a quarter",
        notices=[{"severity": "NOTICE", "message": "x"}],
    )
    data = root_client.get(job_url(job.pk, "state/")).json()
    assert data["id"] == job.pk
    assert data["state"] == "running" and data["pct"] == 25.0 and data["message"] == "a quarter"
    assert data["notices_count"] == 1 and data["terminal"] is False
    assert data["started_at"] and data["run_seconds"] >= 0
    assert "activity" in data
    r = root_client.get(f"{JOBS}states/", {"ids": f"{job.pk},999999,abc"})
    assert [j["id"] for j in r.json()["jobs"]] == [job.pk]


def test_workers_page_and_banner(root_client):
    r = root_client.get(JOBS)
    assert 'id="pgb-no-worker-banner"' in r.content.decode()
    dead = make_worker(alive=False, name="old")
    alive = make_worker(name="fresh")
    running = make_job(root_client.user, state="running", worker=alive, label="busy one")
    other = make_user("other", "view_job")
    make_job(other, state="running", worker=alive)
    r = root_client.get(WORKERS)
    html = r.content.decode()
    assert r.status_code == 200
    assert "pgb-state-running" in html and ">alive<" in html and ">dead<" in html
    assert f"#{running.pk} busy one" in html
    assert "2 / 2" in html
    assert 'id="pgb-no-worker-banner"' not in html
    assert 'id="pgb-no-worker-banner"' not in root_client.get(JOBS).content.decode()
    r = root_client.get(WORKERS, {"status": "dead"})
    assert [w.pk for w in r.context["cl"].result_list] == [dead.pk]
    assert root_client.get(f"{WORKERS}{alive.pk}/change/").status_code == 200
    # An owner sees the worker but only their own running job on it.
    c = Client()
    c.force_login(other)
    html = c.get(WORKERS).content.decode()
    assert f"#{running.pk}" not in html and "+1 not yours" in html


def test_stats_dashboard(root_client):
    bob = make_user("bob", "view_job")
    for state in ("stopped", "stopped", "error", "canceled"):
        make_job(root_client.user, state=state)
    make_job(bob, state="stopped")
    make_job(bob, state="queued")
    r = root_client.get(STATS)
    assert r.status_code == 200
    ctx = r.context
    assert ctx["totals"].workers_launched == 6
    assert ctx["totals"].workers_completed == 3
    assert ctx["overall"]["finished"] == 5 and ctx["overall"]["failed"] == 1
    assert {row["owner"] for row in ctx["per_owner"]} == {"root", "bob"}
    html = r.content.decode()
    assert html.count('<svg class="pgb-chart"') == 2 and 'class="ok"' in html
    assert "p95 run" in html and "avg queue wait" in html
    for window in ("1h", "7d", "30d", "bogus"):
        assert root_client.get(STATS, {"window": window}).status_code == 200
    c = Client()
    c.force_login(bob)
    r = c.get(STATS)
    assert r.context["totals"].workers_launched == 2 and r.context["per_owner"] == []


def test_filter_choices_come_from_the_most_recent_jobs(root_client, monkeypatch):
    from pgbackground.admin import filters

    monkeypatch.setattr(filters, "RECENT_JOBS", 3)
    old_owner, new_owner = make_user("old-owner", "view_job"), make_user("new-owner", "view_job")
    make_job(old_owner, label="old-label")
    for _ in range(3):
        make_job(new_owner, label="new-label")

    def choices() -> str:  # the filter links (the rows show labels and owners too)
        return " ".join(re.findall(r'href="(\?[^"]*)"', root_client.get(JOBS).content.decode()))

    links = choices()
    assert "?label=new-label" in links and f"?owner={new_owner.pk} " in links + " "
    assert "?label=old-label" not in links and f"?owner={old_owner.pk} " not in links + " "
    # Fewer jobs than the window: all of them count.
    monkeypatch.setattr(filters, "RECENT_JOBS", 100)
    links = choices()
    assert "?label=old-label" in links and f"?owner={old_owner.pk} " in links + " "


def test_a_sorted_page_sorts_ids_then_reads_its_rows(root_client):
    """Page 2 of the list sorted by label, descending: the right jobs in the right order, and
    the sort runs over ids (the SQL preview is computed for the page's rows only)."""
    jobs = [make_job(root_client.user, label=f"l{i % 7}", sql=f"SELECT {i}") for i in range(60)]
    expected = sorted(jobs, key=lambda j: (j.label, j.pk), reverse=True)[50:]
    label_column = list(JobAdmin.list_display).index("label_column") + 1  # after the checkbox
    with CaptureQueriesContext(connection) as ctx:
        r = root_client.get(JOBS, {"o": f"-{label_column}", "p": "2"})
    assert r.status_code == 200
    assert [j.pk for j in r.context["cl"].result_list] == [j.pk for j in expected]
    assert [j.sql_preview for j in r.context["cl"].result_list] == [j.sql for j in expected]
    sorted_queries = [q["sql"] for q in ctx.captured_queries
                      if 'ORDER BY "pgbackground_job"."label" DESC' in q["sql"]]
    cut = [q for q in sorted_queries if "OFFSET 50" in q]
    assert len(cut) == 1 and "LEFT(" not in cut[0].upper(), sorted_queries


def test_the_date_drill_down_of_a_one_page_list_reads_that_page(root_client):
    """A search that fits on one page offers the dates of the jobs it found, read from their
    rows: the search runs over the table once."""
    old = make_job(root_client.user, sql="SELECT 'needle'")
    Job.objects.filter(pk=old.pk).update(
        created_at=datetime.datetime(2024, 3, 5, 12, tzinfo=datetime.UTC)
    )
    make_job(root_client.user)  # this year's, not found
    with CaptureQueriesContext(connection) as ctx:
        r = root_client.get(JOBS, {"q": "needle"})
    assert [c["title"] for c in _hierarchy(r)["choices"]] == ["March 5"]
    scans = [q["sql"] for q in ctx.captured_queries
             if "LIKE" in q["sql"] and '"pgbackground_job"."id" IN (' not in q["sql"]]
    assert len(scans) == 1, scans
    # Nothing found: no dates, and no query for them.
    r = root_client.get(JOBS, {"q": "no such text"})
    assert _hierarchy(r)["choices"] == []


def _busy_history(jobs: int) -> datetime.datetime:
    """``jobs`` old jobs of 2024 and 60 finished in the last minute; the cut between them."""
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes, notices,"
            " state, created_at, started_at, finished_at)"
            " SELECT g, 'SELECT 1', 'r', '{}', 0, '[]', 'stopped', t, t, t"
            " FROM generate_series(1, %s) g,"
            " LATERAL (SELECT CASE WHEN g > %s THEN now() - interval '1 second' * (%s - g)"
            "   ELSE timestamptz '2024-03-05 12:00+00' + interval '1 second' * g END AS t) x",
            [jobs + 60, jobs, jobs + 60],
        )
        cur.execute("ANALYZE pgbackground_job")
    return timezone.now() - datetime.timedelta(minutes=2)


def test_the_date_drill_down_of_a_filtered_list_is_bounded(root_client, monkeypatch):
    """Over a filter that makes each date probe walk the table, the drill-down gives up after
    DATE_PROBE_BUDGET_MS and offers the dates of all jobs; the page is served either way and
    the request's own statement_timeout is what it was."""
    cut = _busy_history(100_000)
    params = {"finished_at__gte": cut.isoformat()}
    # Within the budget: the dates of the filtered list (this month's days only).
    monkeypatch.setattr(paging, "DATE_PROBE_BUDGET_MS", 60_000)
    r = root_client.get(JOBS, params)
    assert r.status_code == 200 and r.context["cl"].multi_page
    assert "2024" not in [c["title"] for c in _hierarchy(r)["choices"]]
    # A budget no probe can meet: the dates of every job, 2024 included.
    monkeypatch.setattr(paging, "DATE_PROBE_BUDGET_MS", 1)
    r = root_client.get(JOBS, params)
    assert r.status_code == 200
    assert "2024" in [c["title"] for c in _hierarchy(r)["choices"]]
    assert len(r.context["cl"].result_list) == 50
    with connection.cursor() as cur:  # the test's transaction: what ATOMIC_REQUESTS would see
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone() == ("0",)
