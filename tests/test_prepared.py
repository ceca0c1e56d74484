"""Statements run with libpq's PQexecPrepared (prepared.py) behave like psycopg's own queries:
the same values, the same errors, no notification lost, and recovery when the server forgets
the statement."""

from __future__ import annotations

import datetime
import decimal
import select
import uuid
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings
from psycopg.types.json import Jsonb

import pgbackground as pgb
from pgbackground import prepared
from pgbackground.conf import app_settings
from pgbackground.notifies import NotificationReader
from tests.helpers import raw_connection

pytestmark = pytest.mark.django_db  # the test database exists (raw connections use it)

# Every parameter type the pool's statements use, and a row of typical result types.
ECHO = prepared.NamedStatement(
    "pgbackground_test_echo",
    "SELECT %(i)s, %(big)s, %(f)s, %(t)s, %(b)s, %(j)s, %(raw)s, %(none)s::text,"
    " 1.5::numeric, '2026-11-22 10:00+00'::timestamptz,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, ARRAY[1, 2]",
    {
        "i": "integer",
        "big": "bigint",
        "f": "double precision",
        "t": "text",
        "b": "boolean",
        "j": "jsonb",
        "raw": "bytea",
        "none": "integer",
    },
)
PARAMS: dict[str, Any] = {
    "i": 7,
    "big": -(1 << 63),
    "f": 0.1,
    "t": "é'\\ \"%s",
    "b": True,
    "j": Jsonb({"a": [1, "x"]}),
    "raw": bytes(range(256)),
    "none": None,
}


def test_values_come_back_as_a_psycopg_query_gives_them():
    with raw_connection() as conn:
        (row,) = ECHO.run(conn, PARAMS)
        expected = conn.execute(ECHO.sql, PARAMS).fetchone()
        (binary_row,) = ECHO.run(conn, PARAMS, binary=True)
    assert row == expected == binary_row
    assert row[:5] == (7, -(1 << 63), 0.1, "é'\\ \"%s", True)
    assert row[5:8] == ({"a": [1, "x"]}, bytes(range(256)), None)
    assert isinstance(row[8], decimal.Decimal) and isinstance(row[10], uuid.UUID)
    assert row[9] == datetime.datetime(2026, 11, 22, 10, tzinfo=datetime.UTC) and row[11] == [1, 2]


def test_errors_are_psycopgs_with_the_sqlstate():
    failing = prepared.NamedStatement(
        "pgbackground_test_fail", "SELECT 1 / %(n)s", {"n": "integer"}
    )
    with raw_connection() as conn:
        with pytest.raises(psycopg.errors.DivisionByZero) as info:
            failing.run(conn, {"n": 0})
        assert info.value.sqlstate == "22012"
        assert failing.run(conn, {"n": 1}) == [(1,)]  # the connection is still usable


def test_a_lost_connection_raises_operational_error():
    with raw_connection() as conn, raw_connection() as killer:
        assert ECHO.run(conn, PARAMS)
        killer.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            ECHO.run(conn, PARAMS)
        assert conn.broken


def test_notifications_that_arrive_with_a_result_are_not_lost():
    """The launcher's connection LISTENs for its jobs' ends while it runs statements: what
    libpq read along with a result must still reach notifies()."""
    with raw_connection() as conn, raw_connection() as other:
        conn.execute("LISTEN pgbackground_test_channel")
        ECHO.run(conn, PARAMS)  # prepared: the next run is one libpq call
        other.execute("NOTIFY pgbackground_test_channel, 'hello'")
        # The notification is on conn's socket before the statement is sent: libpq reads it
        # together with the statement's result.
        assert select.select([conn.fileno()], [], [], 10)[0]
        ECHO.run(conn, PARAMS)
        got = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
    assert got == ["hello"]


@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_a_statement_the_server_forgot_is_prepared_again(reset):
    with raw_connection() as conn:
        ECHO.run(conn, PARAMS)
        conn.execute(reset)
        assert ECHO.run(conn, PARAMS)
        assert not prepared._states[conn].unusable


def test_a_statement_whose_result_type_changed_is_prepared_again():
    """A migration that alters a returned column while the pool runs: PostgreSQL refuses the
    old plan (0A000, "cached plan must not change result type")."""
    select = prepared.NamedStatement(
        "pgbackground_test_altered", "SELECT x FROM pgb_test_altered WHERE x > %(n)s", {"n": "int"}
    )
    with raw_connection() as conn:
        conn.execute("CREATE TEMP TABLE pgb_test_altered (x int)")
        conn.execute("INSERT INTO pgb_test_altered VALUES (5)")
        assert select.run(conn, {"n": 0}) == [(5,)]
        conn.execute("ALTER TABLE pgb_test_altered ALTER x TYPE bigint")
        assert select.run(conn, {"n": 0}) == [(5,)]


@pytest.mark.django_db(transaction=True)
def test_a_migration_that_changes_a_returned_column_type_breaks_no_bookkeeping_query():
    """psycopg prepares a query by itself after five runs, and such a statement fails with
    0A000 once a migration changes the type of a column it returns. pgbackground's own
    connections do not let it: the query keeps working on the same connection."""
    from pgbackground.db import launcher_connection

    conn = launcher_connection()
    h = pgb.launch("SELECT 1")
    query = "SELECT id, error_sqlstate FROM pgbackground_job WHERE id = %s"
    for _ in range(8):
        assert conn.execute(query, [h.id]).fetchall() == [(h.id, "")]
    with raw_connection() as admin:
        admin.execute("ALTER TABLE pgbackground_job ALTER error_sqlstate TYPE varchar(6)")
        try:
            assert conn.execute(query, [h.id]).fetchall() == [(h.id, "")]
        finally:
            admin.execute("ALTER TABLE pgbackground_job ALTER error_sqlstate TYPE varchar(5)")
    h.cancel()


def test_a_connection_that_never_keeps_statements_runs_the_plain_statement(monkeypatch):
    """What a transaction pooler does: the statement is gone from every next server session."""
    with raw_connection() as conn:
        real = prepared.exec_prepared

        def forgetful(c: Any, *args: Any, **kwargs: Any) -> Any:
            c.execute("DEALLOCATE ALL")
            return real(c, *args, **kwargs)

        monkeypatch.setattr(prepared, "exec_prepared", forgetful)
        (row,) = ECHO.run(conn, PARAMS)
        assert prepared._states[conn].unusable
        assert row[0] == 7 and ECHO.run(conn, PARAMS)[0][0] == 7


@pytest.fixture
def libpq_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The names of the statements run through prepared.exec_prepared from now on."""
    calls: list[bytes] = []
    real = prepared.exec_prepared

    def spy(conn: Any, name: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return real(conn, name, *args, **kwargs)

    monkeypatch.setattr(prepared, "exec_prepared", spy)
    return calls


@pytest.mark.django_db(transaction=True)
def test_the_launch_runs_over_libpq_unless_someone_watches_the_connection(libpq_calls):
    """Query logging (DEBUG, CaptureQueriesContext) and foreign execute wrappers still see
    every launch; without them the prepared launch skips Django's cursor."""
    calls = libpq_calls
    for n in range(3):  # the first two prepare (settings read, then known) through Django
        pgb.launch(f"SELECT {n}")
    assert calls and all(c.startswith(b"pgbackground_launch_") for c in calls)
    fast = len(calls)

    with CaptureQueriesContext(connection) as captured:
        h = pgb.launch("SELECT 3")
    logged = [q["sql"] for q in captured.captured_queries]
    assert any(sql.startswith("EXECUTE pgbackground_launch_") for sql in logged)

    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        h2 = pgb.launch("SELECT 4")
    assert any(s.startswith("EXECUTE pgbackground_launch_") for s in seen)
    assert len(calls) == fast
    assert h.id < h2.id


@pytest.mark.django_db(transaction=True)
def test_a_launch_error_is_djangos_with_the_sqlstate_as_cause(libpq_calls):
    from django.db import DatabaseError

    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = 1")
    try:
        for n in range(3):  # prepared for the settings as they are now
            pgb.launch(f"SELECT {n}")
        before = len(libpq_calls)
        with raw_connection() as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE pgbackground_job IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseError) as info:
                pgb.launch("SELECT 2")
            locker.execute("ROLLBACK")
        assert len(libpq_calls) > before  # the error came through the libpq path
        assert getattr(info.value.__cause__, "sqlstate", None) == "55P03"
        assert pgb.launch("SELECT 3").id > 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


def test_settings_are_read_again_when_they_change():
    before = app_settings.MAX_WORKERS
    with override_settings(PGBACKGROUND={"MAX_WORKERS": before + 5}):
        during = app_settings.MAX_WORKERS
    after = app_settings.MAX_WORKERS
    assert (during, after) == (before + 5, before)


def test_the_notification_reader_keeps_what_arrives_with_other_results():
    """The pool's listener reads with NotificationReader; its connection also runs heartbeats."""
    with raw_connection() as conn, raw_connection() as other:
        reader = NotificationReader(conn)
        conn.execute("LISTEN pgbackground_test_a")
        assert reader.read(conn, 0) == []
        other.execute("NOTIFY pgbackground_test_a, 'during'")
        assert select.select([conn.fileno()], [], [], 10)[0]
        conn.execute("SELECT 1")  # reads the notification along with its result
        assert [n.payload for n in reader.read(conn, 0)] == ["during"]
        other.execute("NOTIFY pgbackground_test_a, 'waited'")
        assert [n.payload for n in reader.read(conn, 10)] == ["waited"]
        other.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            for _ in range(3):  # libpq reads the FATAL message first, then the end of the stream
                reader.read(conn, 10)
        reader.close()
