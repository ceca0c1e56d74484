"""The launcher's session settings are read from pg_settings once per connection and again
after any statement that may change them (pgbackground/capture.py)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import pgbackground as pgb
from pgbackground.capture import may_change_settings
from pgbackground.launcher import _INLINE_INSERT
from tests.helpers import sql


@pytest.mark.parametrize(
    "text",
    [
        "SET work_mem = '8MB'",
        "set local lock_timeout to 5",
        "  /* app */ SET ROLE reader",
        "-- note\nSET search_path = app",
        "RESET ALL",
        "reset work_mem",
        "DISCARD ALL",
        "SELECT 1; SET work_mem = 1",
        "BEGIN; SET LOCAL x.y = 1; COMMIT",
        "SELECT set_config('work_mem', '8MB', false)",
        "SELECT pg_catalog.SET_CONFIG ('a.b', 'c', false)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL app.refresh()",
        "SET SESSION AUTHORIZATION alice",
        "SET TIME ZONE 'UTC'",
    ],
)
def test_statements_that_may_change_a_setting_are_recognised(text):
    assert may_change_settings(text)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1",
        "UPDATE app_user SET name = 'x' WHERE id = 1",
        "INSERT INTO t (settings) VALUES ('set work_mem')",
        "WITH u AS (UPDATE t SET v = 1 RETURNING v) SELECT * FROM u",
        "ALTER ROLE app SET work_mem = '8MB'",
        "SELECT reset_count FROM stats",
        "/* pgbackground */ WITH s AS (SELECT set_config('synchronous_commit', 'off', true))",
        "EXECUTE pgbackground_launch_0123456789 (1)",
    ],
)
def test_other_statements_are_not(text):
    assert not may_change_settings(text)


def test_composed_sql_counts_as_a_change():
    from psycopg import sql as pgsql

    assert may_change_settings(pgsql.SQL("SELECT 1"))


def _job_setting(h: pgb.Handle) -> str:
    assert h.wait(timeout=60)
    return h.result().rows[0][0]


@pytest.fixture
def reset_session():
    yield
    connection.close()  # the next test starts on a connection set up by Django


def _launches(sql_text: str) -> tuple[pgb.Handle, str]:
    """Launch on Django's connection; the handle and which launch statement ran."""
    with CaptureQueriesContext(connection) as queries:
        h = pgb.launch(sql_text)
    executed = " ".join(q["sql"] for q in queries.captured_queries)
    if _INLINE_INSERT["known"].name in executed:
        return h, "known"
    assert _INLINE_INSERT["scan"].name in executed, executed
    return h, "scan"


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_pg_settings_is_read_once_until_a_setting_changes(pool, reset_session):
    sql("SET work_mem = '7MB'")
    first, how_first = _launches("SELECT current_setting('work_mem')")
    second, how_second = _launches("SELECT current_setting('work_mem')")
    assert (how_first, how_second) == ("scan", "known")
    assert _job_setting(first) == _job_setting(second) == "7MB"
    assert second.job().gucs == first.job().gucs

    sql("UPDATE pgbackground_worker SET hostname = hostname WHERE false")  # not a SET
    assert _launches("SELECT 1")[1] == "known"


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("SET work_mem = '9MB'", "9MB"),
        ("SELECT set_config('work_mem', '9MB', false)", "9MB"),
        ("DO $$ BEGIN PERFORM set_config('work_mem', '9MB', false); END $$", "9MB"),
        ("RESET work_mem", None),
        ("DISCARD ALL", None),
    ],
)
def test_a_change_after_a_launch_reaches_the_next_job(pool, reset_session, change, expected):
    default = sql("SHOW work_mem")[0][0]
    sql("SET work_mem = '7MB'")
    assert _job_setting(pgb.launch("SELECT current_setting('work_mem')")) == "7MB"
    sql(change)
    h = pgb.launch("SELECT current_setting('work_mem')")
    shown = _job_setting(h)
    if expected is None:
        assert "work_mem" not in h.job().gucs
        assert shown == default
    else:
        assert shown == expected


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_role_and_time_zone_are_read_by_every_launch(pool, reset_session):
    pgb.launch("SELECT 1").wait(timeout=60)
    # Through the raw connection: the watch does not see it, the launch reads them anyway.
    connection.connection.execute("SET TimeZone = 'Asia/Tokyo'")
    h, how = _launches("SELECT current_setting('TimeZone')")
    assert how == "known"
    assert _job_setting(h) == "Asia/Tokyo"


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_a_common_setting_changed_behind_djangos_back_is_seen(pool, reset_session):
    pgb.launch("SELECT 1").wait(timeout=60)
    # Unseen by the watch (the raw connection), but search_path is in the fingerprint.
    connection.connection.execute("SET search_path = pg_catalog, public")
    h, how = _launches("SELECT current_setting('search_path')")
    assert how == "known"  # the statement of a known capture, which read pg_settings after all
    assert _job_setting(h) == "pg_catalog, public"
    assert h.job().gucs["search_path"] == "pg_catalog, public"
    again = pgb.launch("SELECT current_setting('search_path')")
    assert again.job().gucs == h.job().gucs


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_a_setting_local_to_a_rolled_back_transaction_is_not_kept(pool, reset_session):
    pgb.launch("SELECT 1").wait(timeout=60)
    with transaction.atomic():
        sql("SET LOCAL work_mem = '11MB'")
        inside = pgb.launch("SELECT current_setting('work_mem')", on_commit=True)
        transaction.set_rollback(True)
    del inside  # rolled back with the transaction: never queued
    h = pgb.launch("SELECT current_setting('work_mem')")
    assert "work_mem" not in h.job().gucs
    assert _job_setting(h) != "11MB"


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_a_new_connection_is_read_afresh(pool, reset_session):
    sql("SET work_mem = '7MB'")
    pgb.launch("SELECT 1").wait(timeout=60)
    connection.close()
    h, how = _launches("SELECT current_setting('work_mem')")
    assert how == "scan"
    assert "work_mem" not in h.job().gucs


@pytest.mark.pool
@pytest.mark.django_db(transaction=True)
def test_without_the_cache_every_launch_reads_pg_settings(pool, reset_session):
    with override_settings(PGBACKGROUND={"CACHE_SESSION_SETTINGS": False}):
        pgb.launch("SELECT 1").wait(timeout=60)
        # Unseen by the watch; read anyway, since nothing is cached.
        connection.connection.execute("SET work_mem = '5MB'")
        h, how = _launches("SELECT current_setting('work_mem')")
    assert how == "scan"
    assert _job_setting(h) == "5MB"
