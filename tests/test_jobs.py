"""The API and SPEC's semantics against a real ``runworkers`` pool."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test import override_settings

import pgbackground as pgb
from pgbackground.models import Job, JobResultChunk
from tests.helpers import EventListener, sql

pytestmark = [pytest.mark.pool, pytest.mark.django_db(transaction=True)]


def run(sql_text: str, **kwargs):
    h = pgb.launch(sql_text, **kwargs)
    assert h.wait(timeout=60)
    return h


@pytest.fixture
def table():
    sql("CREATE TABLE scratch (v int)")
    yield "scratch"
    sql("DROP TABLE IF EXISTS scratch")


def test_result_has_columns_rows_and_tag(pool):
    h = run("SELECT 1 AS one, 'two'::text AS two UNION ALL SELECT 3, NULL ORDER BY 1")
    assert h.state == "stopped"
    r = h.result()
    assert [(c.name, c.type_name, c.type_oid) for c in r.columns] == [
        ("one", "integer", 23),
        ("two", "text", 25),
    ]
    assert r.rows == [(1, "two"), (3, None)]
    assert list(r) == r.rows
    assert (r.command_tag, r.row_count, len(r)) == ("SELECT 2", 2, 2)


def test_values_have_psycopg_types(pool):
    h = run("""
        SELECT 42::int8, 1.5::numeric(5,2), 2.5::float8, true, now(), '2024-02-29'::date,
               '\\xdeadbeef'::bytea, 'a8098c1a-f86e-11da-bd1a-00112444be1e'::uuid,
               '{"a": [1, 2]}'::json, '{"b": null}'::jsonb, ARRAY[1, NULL, 3],
               ARRAY['x', 'y z'], '1 day 2 hours'::interval, NULL::int, '',
               E'tab\\there\\nnew line \\\\ back', 'ünïcødé ✓', '12:30'::time
    """)
    (row,) = h.result().rows
    assert row[0] == 42 and isinstance(row[0], int)
    assert row[1] == Decimal("1.50")
    assert row[2] == 2.5
    assert row[3] is True
    assert isinstance(row[4], dt.datetime) and row[4].tzinfo is not None
    assert row[5] == dt.date(2024, 2, 29)
    assert row[6] == b"\xde\xad\xbe\xef"
    assert row[7] == uuid.UUID("a8098c1a-f86e-11da-bd1a-00112444be1e")
    assert row[8] == {"a": [1, 2]} and row[9] == {"b": None}
    assert row[10] == [1, None, 3] and row[11] == ["x", "y z"]
    assert row[12] == dt.timedelta(days=1, hours=2)
    assert row[13] is None and row[14] == ""
    assert row[15] == "tab\there\nnew line \\ back"
    assert row[16] == "ünïcødé ✓"
    assert row[17] == dt.time(12, 30)


def test_large_result_streams_in_chunks_and_is_exact(pool):
    h = run(
        "SELECT g, md5(g::text), CASE WHEN g % 7 = 0 THEN NULL ELSE g END"
        " FROM generate_series(1, 60000) g"
    )
    job = h.job()
    assert job.result_rows == 60000
    assert JobResultChunk.objects.filter(job_id=h.id).count() > 1
    r = h.result()
    seen = 0
    for i, row in enumerate(r, start=1):
        assert row[0] == i and (row[2] is None) == (i % 7 == 0)
        seen += 1
    assert seen == 60000
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()  # dropped once read
    with pytest.raises(pgb.ResultConsumed):
        list(r)


def test_result_is_consumed_once(pool):
    h = run("SELECT 1")
    assert h.result().rows == [(1,)]
    with pytest.raises(pgb.ResultConsumed):
        h.result()
    info = h.result_info()
    assert (info.completed, info.has_error, info.row_count) == (True, False, 1)


def test_result_info_does_not_consume(pool):
    h = run("SELECT g FROM generate_series(1, 3) g")
    info = h.result_info()
    assert (info.row_count, info.command_tag, info.completed, info.has_error) == (
        3,
        "SELECT 3",
        True,
        False,
    )
    assert h.result_info() == info
    assert h.result().rows == [(1,), (2,), (3,)]


def test_result_waits_for_the_job(pool):
    h = pgb.launch("SELECT pg_sleep(0.3); SELECT 'done'")
    assert h.result().rows == [("done",)]


def test_failed_job_raises_job_error_with_real_sqlstate(pool):
    h = run("""DO $$ BEGIN RAISE EXCEPTION 'custom failure' USING ERRCODE = 'P0042',
                DETAIL = 'the detail', HINT = 'the hint'; END $$""")
    assert h.state == "error"
    for _ in range(2):  # an error is not consumed
        with pytest.raises(pgb.JobError) as info:
            h.result()
        e = info.value
        assert (e.sqlstate, e.message, e.detail, e.hint) == (
            "P0042",
            "custom failure",
            "the detail",
            "the hint",
        )
        assert "PL/pgSQL" in e.context
    err = h.error_info()
    assert (err.sqlstate, err.message) == ("P0042", "custom failure")
    info = h.result_info()
    assert (info.completed, info.has_error) == (True, True)


def test_syntax_error_keeps_its_position(pool):
    h = run("SELECT 1;\nSELEC 2")
    err = h.error_info()
    assert err.sqlstate == "42601"
    assert err.position == 11


def test_error_info_is_none_for_a_successful_job(pool):
    assert run("SELECT 1").error_info() is None


def test_several_statements_see_each_others_writes(pool):
    h = run(
        "CREATE TABLE t_multi (v int); INSERT INTO t_multi VALUES (1), (2);"
        " SELECT sum(v) FROM t_multi; DROP TABLE t_multi"
    )
    r = h.result()
    assert r.rows == [(3,)]
    assert r.command_tag == "DROP TABLE"
    assert r.row_count is None


def test_result_is_the_last_set_with_columns_and_tag_is_the_last_statements(pool, table):
    h = run(f"SELECT 'first'; SELECT 'second', 2; INSERT INTO {table} VALUES (1), (2)")
    r = h.result()
    assert r.rows == [("second", 2)]
    assert (r.command_tag, r.row_count) == ("INSERT 0 2", 2)


def test_empty_result_keeps_its_columns(pool):
    r = run("SELECT 1 AS a WHERE false").result()
    assert [c.name for c in r.columns] == ["a"] and r.rows == []


def test_an_error_rolls_back_the_whole_string(pool, table):
    h = run(f"INSERT INTO {table} VALUES (1); SELECT 1/0; INSERT INTO {table} VALUES (2)")
    assert h.error_info().sqlstate == "22012"
    assert sql(f"SELECT count(*) FROM {table}") == [(0,)]


def test_lone_vacuum_and_create_index_concurrently_work(pool, table):
    assert run(f"VACUUM (ANALYZE) {table}").state == "stopped"
    h = run(f"CREATE INDEX CONCURRENTLY scratch_v ON {table} (v)")
    assert h.state == "stopped", h.error_info()
    assert sql("SELECT to_regclass('scratch_v') IS NOT NULL") == [(True,)]


def test_vacuum_verbose_notices_are_kept_in_order(pool, table):
    h = run(f"VACUUM (VERBOSE) {table}")
    notices = h.notices()
    assert notices and all(n.severity == "INFO" for n in notices)
    assert "vacuuming" in notices[0].message


def test_notices_in_order(pool):
    h = run("""DO $$ BEGIN
        RAISE NOTICE 'one'; RAISE WARNING 'two'; RAISE INFO 'three';
        RAISE NOTICE 'four' USING DETAIL = 'd', HINT = 'h'; END $$""")
    ns = h.notices()
    assert [(n.severity, n.message) for n in ns] == [
        ("NOTICE", "one"),
        ("WARNING", "two"),
        ("INFO", "three"),
        ("NOTICE", "four"),
    ]
    assert (ns[3].detail, ns[3].hint) == ("d", "h")


def test_job_never_sees_the_launchers_uncommitted_rows_or_temp_tables(pool, table):
    sql("CREATE TEMP TABLE launcher_tmp (v int)")
    with transaction.atomic():
        sql(f"INSERT INTO {table} VALUES (1)")
        h = run(f"SELECT count(*) FROM {table}")
        assert h.result().rows == [(0,)]
        h2 = run("SELECT * FROM launcher_tmp")
        assert h2.error_info().sqlstate == "42P01"
        transaction.set_rollback(True)


def test_autonomous_commit_survives_the_callers_rollback(pool, table):
    with transaction.atomic():
        h = pgb.launch(f"INSERT INTO {table} VALUES (7)")
        transaction.set_rollback(True)
    assert h.wait(60) and h.state == "stopped"
    assert sql(f"SELECT v FROM {table}") == [(7,)]


def test_on_commit_runs_after_commit_only(pool, table):
    with transaction.atomic():
        h = pgb.launch(f"INSERT INTO {table} VALUES (1)", on_commit=True)
        transaction.set_rollback(True)
    with transaction.atomic():
        h2 = pgb.launch(f"INSERT INTO {table} VALUES (2)", on_commit=True)
    assert h2.wait(60)
    assert sql(f"SELECT v FROM {table}") == [(2,)]
    with pytest.raises(pgb.InvalidHandle):
        h.wait(0)


@pytest.mark.parametrize(
    "copy",
    [
        "COPY scratch FROM STDIN",
        "COPY scratch TO STDOUT",
        "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)",
    ],
)
def test_client_copy_fails_with_0a000_and_nothing_commits(pool, table, copy):
    h = run(f"INSERT INTO {table} VALUES (1); {copy}")
    err = h.error_info()
    assert err.sqlstate == "0A000"
    assert "not supported in a background job" in err.message
    assert sql(f"SELECT count(*) FROM {table}") == [(0,)]


def test_server_side_copy_is_allowed(pool, table):
    h = run("COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'; SELECT 'ok'")
    assert h.state == "stopped", h.error_info()


def test_open_transaction_block_is_rolled_back_and_reported(pool, table):
    h = run(f"BEGIN; INSERT INTO {table} VALUES (1)")
    assert h.error_info().sqlstate == "25000"
    assert sql(f"SELECT count(*) FROM {table}") == [(0,)]
    h = run(f"BEGIN; INSERT INTO {table} VALUES (2); COMMIT; SELECT 'after'")
    assert h.result().rows == [("after",)]
    assert sql(f"SELECT v FROM {table}") == [(2,)]


def test_progress_is_seen_while_the_job_runs(pool):
    events = EventListener()
    try:
        h = pgb.launch("SELECT pgbackground_progress(150, 'halfway'); SELECT pg_sleep(60)")
        events.wait_for(h.id, lambda e: e["pct"] == 100)
        p = h.progress()
        assert (p.pct, p.message) == (100.0, "halfway")
        assert h.state == "running"
        h.cancel()
        assert h.state == "canceled"
    finally:
        events.close()


def test_a_job_that_keeps_running_is_announced_running_before_its_outcome(pool):
    events = EventListener()
    try:
        h = pgb.launch("SELECT pg_sleep(0.5)")
        running = events.wait_for(h.id, lambda e: e["state"] == "running")
        assert h.state == "running"
        done = events.wait_for(h.id, lambda e: e["state"] == "stopped")
        assert running["seq"] < done["seq"]
        assert running["owner"] is None and running["notices_count"] == 0
    finally:
        events.close()


def test_progress_is_clamped_and_cut(pool):
    long = "é" * 600
    h = run(
        f"SELECT pgbackground_progress(-5, 'low'); SELECT pgbackground_progress(42.5, '{long}')"
    )
    p = h.progress()
    assert p.pct == 42.5
    assert p.message == "é" * 500
    assert run("SELECT pgbackground_progress(-5)").progress().pct == 0
    assert run("SELECT 1").progress() is None
    assert run("SELECT pgbackground_progress('NaN')").error_info().sqlstate == "22023"


def test_progress_works_whatever_client_min_messages_is(pool):
    h = run("SET client_min_messages = error; SELECT pgbackground_progress(30, 'quiet')")
    assert h.progress().pct == 30
    assert h.notices() == []


def test_wait_is_not_blocked_by_an_unread_result(pool):
    h = pgb.launch("SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g")
    assert h.wait(timeout=120)
    assert h.result_info().row_count == 200000


def test_session_settings_carry_over_and_overrides_win(pool):
    with connection.cursor() as c:
        c.execute("SET work_mem = '7MB'")
        c.execute("SET lock_timeout = '5s'")
    try:
        h = run(
            "SELECT current_setting('work_mem'), current_setting('lock_timeout'),"
            " current_setting('myapp.x')",
            gucs={"lock_timeout": "9s", "myapp.x": "y"},
        )
    finally:
        with connection.cursor() as c:
            c.execute("RESET ALL")
    assert h.result().rows == [("7MB", "9s", "y")]
    assert h.job().gucs["lock_timeout"] == "9s"


@pytest.mark.parametrize("on_commit", [False, True])
@pytest.mark.parametrize("overrides", [None, {"myapp.x": "y"}])
def test_without_session_carry_over_only_role_and_time_zone_travel(pool, on_commit, overrides):
    sql("DROP ROLE IF EXISTS pgb_test_carry")
    sql("CREATE ROLE pgb_test_carry NOLOGIN")
    with connection.cursor() as c:
        default_work_mem = sql("SHOW work_mem")[0][0]
        c.execute("SET work_mem = '7MB'")
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        if not on_commit:  # on_commit inserts in the caller's transaction, as its current role
            c.execute("SET ROLE pgb_test_carry")
    try:
        with override_settings(PGBACKGROUND={"CARRY_SESSION_SETTINGS": False}):
            h = pgb.launch(
                "SELECT current_setting('work_mem'), current_setting('TimeZone'),"
                " current_user::text, current_setting('myapp.x', true)",
                gucs=overrides,
                on_commit=on_commit,
            )
    finally:
        with connection.cursor() as c:
            c.execute("RESET ALL")
            c.execute("RESET ROLE")
    try:
        role = sql("SELECT current_user::text")[0][0] if on_commit else "pgb_test_carry"
        assert h.result().rows == [
            (default_work_mem, "Asia/Tokyo", role, "y" if overrides else None)
        ]
        assert "work_mem" not in h.job().gucs
    finally:
        sql("DROP ROLE IF EXISTS pgb_test_carry")


def test_jobs_run_as_the_launchers_current_role(pool):
    sql("DROP ROLE IF EXISTS pgb_test_reader")
    sql("CREATE ROLE pgb_test_reader NOLOGIN")
    try:
        sql("SET ROLE pgb_test_reader")
        h = pgb.launch("SELECT current_user::text")
        sql("RESET ROLE")
        assert h.job().role == "pgb_test_reader"
        assert h.result().rows == [("pgb_test_reader",)]
    finally:
        sql("RESET ROLE")
        sql("DROP ROLE IF EXISTS pgb_test_reader")


def test_nothing_leaks_from_one_job_to_the_next(start_pool):
    start_pool("--concurrency", "1")
    first = run(
        "SET work_mem = '9MB'; CREATE TEMP TABLE leftover (v int);"
        " PREPARE leftover_stmt AS SELECT 1; SET ROLE NONE;"
        " SELECT pg_advisory_lock(4242); LISTEN leftover_channel; SELECT 1"
    )
    assert first.state == "stopped", first.error_info()
    second = run(
        "SELECT current_setting('work_mem'), to_regclass('pg_temp.leftover'),"
        " (SELECT count(*) FROM pg_prepared_statements),"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        "  AND pid = pg_backend_pid()),"
        " (SELECT count(*) FROM pg_listening_channels()), pg_backend_pid()"
    )
    work_mem, temp, prepared, locks, channels, pid = second.result().rows[0]
    assert (work_mem, temp, prepared, locks, channels) == ("4MB", None, 0, 0, 0)
    assert pid == first.job().backend_pid  # the same connection was reused


def test_timeout_ends_the_job_with_57014(pool, table):
    h = run(f"INSERT INTO {table} VALUES (1); SELECT pg_sleep(60)", timeout=0.3)
    assert h.state == "error"
    err = h.error_info()
    assert err.sqlstate == "57014" and "timeout" in err.message
    assert sql(f"SELECT count(*) FROM {table}") == [(0,)]


def test_cancel_running_job_rolls_back(pool, table):
    events = EventListener()
    try:
        h = pgb.launch(
            f"INSERT INTO {table} VALUES (1);"
            " SELECT pgbackground_progress(1, 'inserted'); SELECT pg_sleep(60)"
        )
        events.wait_for(h.id, lambda e: e["pct"] == 1)
        h.cancel()  # returns once the job is terminal
        assert h.state == "canceled"
        with pytest.raises(pgb.JobCanceled) as info:
            h.result()
        assert info.value.sqlstate == "57014"
        assert sql(f"SELECT count(*) FROM {table}") == [(0,)]
    finally:
        events.close()


def test_cancel_with_grace_lets_a_short_job_finish(pool, table):
    events = EventListener()
    try:
        h = pgb.launch(
            "SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(0.5);"
            f" INSERT INTO {table} VALUES (1)"
        )
        events.wait_for(h.id, lambda e: e["pct"] == 1)
        h.cancel(grace=60)
        assert h.wait(60)
        assert h.state == "stopped"
        assert sql(f"SELECT count(*) FROM {table}") == [(1,)]
    finally:
        events.close()


def test_cancel_with_grace_stops_a_long_job_after_the_grace(pool):
    events = EventListener()
    try:
        h = pgb.launch("SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)")
        events.wait_for(h.id, lambda e: e["pct"] == 1)
        h.cancel(grace=0.2)
        assert h.wait(30)
        assert h.state == "canceled"
        job = h.job()
        assert job.finished_at >= job.cancel_requested_at + dt.timedelta(seconds=0.2)
    finally:
        events.close()


def test_cancel_of_a_finished_job_changes_nothing(pool):
    h = run("SELECT 1")
    before = h.job()
    h.cancel()
    after = h.job()
    assert (after.state, after.finished_at, after.event_seq) == (
        "stopped",
        before.finished_at,
        before.event_seq,
    )
    assert h.result().rows == [(1,)]


def test_detach_keeps_the_job_running_and_drops_its_result(pool, table):
    h = pgb.launch(f"SELECT pg_sleep(0.2); INSERT INTO {table} VALUES (5); SELECT 1")
    h.detach()
    assert h.wait(60)
    assert h.state == "stopped"
    assert sql(f"SELECT v FROM {table}") == [(5,)]
    with pytest.raises(pgb.JobDetached):
        h.result()
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    assert Job.objects.get(pk=h.id).result_data is None  # detached before the outcome
    h.detach()  # detaching twice is harmless


def test_detaching_a_finished_job_clears_the_result_kept_in_its_row(pool):
    h = run("SELECT 1")
    assert Job.objects.get(pk=h.id).result_data is not None
    h.detach()
    assert Job.objects.get(pk=h.id).result_data is None
    with pytest.raises(pgb.JobDetached):
        h.result()


def test_submit_is_fire_and_forget(pool):
    h = pgb.submit("SELECT g FROM generate_series(1, 5000) g")
    assert h.wait(60)
    assert h.state == "stopped"
    assert h.result_info().row_count == 5000
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    with pytest.raises(pgb.JobDetached):
        h.result()
    bad = pgb.submit("SELECT 1/0")
    assert bad.wait(60) and bad.error_info().sqlstate == "22012"


def test_result_larger_than_the_limit_fails_with_54000_and_keeps_nothing(pool):
    h = run("SELECT g, md5(g::text) FROM generate_series(1, 100000) g", max_result_bytes=10000)
    err = h.error_info()
    assert err.sqlstate == "54000"
    assert "max_result_bytes" in err.message
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    ok = run("SELECT 'x'", max_result_bytes=10)
    assert ok.result().rows == [("x",)]


def test_stats_follow_the_jobs(pool):
    run("SELECT 1")
    run("SELECT 1/0")
    c = pgb.launch("SELECT 1")
    c.cancel()  # queued or running: canceled either way... unless already done
    run("SELECT 2")
    s = pgb.stats()
    assert s.workers_launched == 4
    assert s.workers_failed == 1
    assert s.workers_completed + s.workers_canceled == 3
    assert s.workers_active == 0
    assert s.avg_execution_ms is not None and s.avg_execution_ms >= 0
    assert s.max_workers == 16


def test_job_records_where_and_how_it_ran(pool):
    h = run("SELECT pg_backend_pid()", label="where")
    job = Job.objects.select_related("worker").get(pk=h.id)
    assert job.worker.pid == pool.pid
    assert h.result().rows == [(job.backend_pid,)]
    assert job.created_at <= job.started_at <= job.finished_at
    assert job.duration is not None and job.duration >= 0


def test_the_jobs_own_statement_timeout_is_an_error_not_a_cancel(pool):
    h = run("SET statement_timeout = '50ms'; SELECT pg_sleep(5)")
    assert h.state == "error"
    err = h.error_info()
    assert err.sqlstate == "57014"
    assert "statement timeout" in err.message


def test_jobs_carry_the_launchers_time_zone(pool):
    with connection.cursor() as c:
        c.execute("SET TimeZone = 'Asia/Tokyo'")
    try:
        h = run("SELECT current_setting('TimeZone')")
    finally:
        with connection.cursor() as c:
            c.execute("RESET ALL")
    assert h.result().rows == [("Asia/Tokyo",)]
    expected = sql("SELECT current_setting('TimeZone')")
    assert run("SELECT current_setting('TimeZone')").result().rows == expected


def test_redact_sql_replaces_the_sql_once_the_job_ran(start_pool):
    start_pool("--concurrency", "1", env={"PGBACKGROUND_REDACT_SQL": "true"})
    h = run("SELECT 'secret' AS password")
    assert h.result().rows == [("secret",)]
    job = h.job()
    assert "secret" not in job.sql
    assert job.sql.startswith("-- SQL redacted after the run")


def test_store_results_off_makes_every_job_fire_and_forget(pool):
    from django.test import override_settings

    with override_settings(PGBACKGROUND={"STORE_RESULTS": False}):
        h = run("SELECT 'kept nowhere'")
    assert h.state == "stopped"
    assert h.result_info().row_count == 1
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    with pytest.raises(pgb.JobDetached, match="STORE_RESULTS"):
        h.result()


def test_a_failed_job_reports_no_command_tag(pool):
    h = run("SELECT 1; SELECT 1/0")
    info = h.result_info()
    assert (info.command_tag, info.row_count, info.has_error) == ("", None, True)


@pytest.mark.parametrize("sql", ["SELECT 1", "SELECT repeat('x', 3000)"])
def test_a_small_result_whose_rows_were_deleted_is_an_error_not_an_empty_result(pool, sql):
    h = run(sql)
    # What a purge does: its chunk rows, or the result kept in the job's row, go.
    JobResultChunk.objects.filter(job_id=h.id).delete()
    Job.objects.filter(pk=h.id).update(result_data=None, result_nulls=None)
    result = h.result()
    assert len(result) == 1
    with pytest.raises(pgb.ResultConsumed, match="only 0 of the result's 1 rows"):
        _ = result.rows


def test_a_small_result_is_kept_in_the_job_row_and_cleared_when_consumed(pool):
    """One small chunk goes into the job's own row: no chunk row is written, none deleted."""
    h = run("SELECT 1 AS a, NULL::text AS b, 'x' AS c")
    job = Job.objects.get(pk=h.id)
    assert job.result_data is not None and job.result_nulls is not None
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    assert h.result().rows == [(1, None, "x")]
    job = Job.objects.get(pk=h.id)
    assert (job.consumed, job.result_data, job.result_nulls) == (True, None, None)
    with pytest.raises(pgb.ResultConsumed):
        h.result()


def test_a_result_over_the_row_limit_goes_to_chunk_rows(pool):
    from pgbackground.pool import RESULT_IN_ROW_BYTES

    at_limit = run(f"SELECT repeat('x', {RESULT_IN_ROW_BYTES})")
    assert Job.objects.get(pk=at_limit.id).result_data is not None
    h = run(f"SELECT repeat('x', {RESULT_IN_ROW_BYTES + 1})")
    assert Job.objects.get(pk=h.id).result_data is None
    assert JobResultChunk.objects.filter(job_id=h.id).count() == 1
    assert h.result().rows == [("x" * (RESULT_IN_ROW_BYTES + 1),)]
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()


def test_a_result_in_the_row_reads_like_chunk_rows_without_consuming(pool):
    from pgbackground.admin import resultview
    from pgbackground.db import launcher_connection
    from pgbackground.results import columns_from_json, iter_rows

    h = run("SELECT g, NULL::int AS n FROM generate_series(1, 3) g")
    job = Job.objects.get(pk=h.id)
    assert job.result_data is not None
    cols = columns_from_json(job.result_columns)
    assert resultview.preview(job) == [["1", None], ["2", None], ["3", None]]
    assert list(resultview.csv_lines(h.id, cols)) == ["g,n\r\n", "1,\r\n2,\r\n3,\r\n"]
    streamed = [r for b in iter_rows(launcher_connection(), h.id, cols, one_query=True) for r in b]
    assert streamed == [(1, None), (2, None), (3, None)]
    assert h.result().rows == [(1, None), (2, None), (3, None)]  # still there to consume
