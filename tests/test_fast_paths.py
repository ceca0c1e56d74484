"""The shortcuts of the hot path behave like the long way: the process's reply channel
(wait/result without a LISTEN of their own) and the launch statement prepared on the caller's
connection."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

import pgbackground as pgb
from pgbackground import events, handles, prepared, replies
from pgbackground.db import close_launcher_connections, launcher_connection, reply_hub
from pgbackground.models import Job
from tests.helpers import raw_connection

LOCK_KEY = 8_615_001


def _reply_pid(h: pgb.Handle) -> int | None:
    return Job.objects.values_list("reply_pid", flat=True).get(pk=h.id)


def _in_thread(fn: Any) -> Any:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed back to the test
            out["error"] = exc
        finally:
            from django.db import connections

            from pgbackground.db import discard_launcher_connection

            discard_launcher_connection()
            connections.close_all()

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.mark.django_db(transaction=True)
def test_a_job_names_the_processs_reply_channel_once_it_has_one():
    close_launcher_connections()
    # A process without a launcher connection opens none just to launch.
    first = pgb.launch("SELECT 1")
    assert _reply_pid(first) is None and reply_hub() is None
    launcher_connection()
    hub = reply_hub()
    assert hub is not None and hub.pid != launcher_connection().info.backend_pid
    h = pgb.launch("SELECT 1")
    assert _reply_pid(h) == hub.pid
    assert hub.expects(h.id, h.cookie)
    assert not hub.expects(h.id, h.cookie + 1)
    # Every thread of the process names it: one LISTENing connection, however many threads.
    other = _in_thread(lambda: pgb.launch("SELECT 2"))
    assert _reply_pid(other) == hub.pid and hub.expects(other.id, other.cookie)


def test_result_and_wait_on_the_launching_thread(pool):
    launcher_connection()
    h = pgb.launch("SELECT 42 AS answer")
    assert h.wait(60)
    assert h.result().rows == [(42,)]
    with pytest.raises(pgb.ResultConsumed):
        h.result()
    h2 = pgb.launch("SELECT 1/0")
    with pytest.raises(pgb.JobError) as info:
        h2.result()
    assert info.value.sqlstate == "22012"
    hub = reply_hub()
    assert hub is not None and not hub.expects(h.id, h.cookie)


def test_other_threads_are_told_too(pool):
    launcher_connection()
    h = pgb.launch("SELECT 7")
    text = str(h)
    assert _in_thread(lambda: pgb.Handle.parse(text).result().rows) == [(7,)]


def test_threads_share_the_reply_connection_and_hand_each_other_the_ends(pool, monkeypatch):
    """Threads waiting at once take turns reading the one reply connection and note the ends
    of the others' jobs for them (including an end read before its thread registered the job):
    every wait is answered by a proven notification, none reads the row or LISTENs itself."""
    launcher_connection()
    reads: list[str] = []
    fetch = handles._fetch

    def counting_fetch(conn: Any, job_id: int, cookie: int, columns: str) -> Any:
        reads.append(columns)
        return fetch(conn, job_id, cookie, columns)

    def no_own_channel(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("waited on the job's own channel")

    monkeypatch.setattr(handles, "_fetch", counting_fetch)
    monkeypatch.setattr(pgb.Handle, "_await_own_channel", no_own_channel)

    def work(n: int) -> list[int]:
        out = []
        for i in range(25):
            h = pgb.launch(f"SELECT {n * 100 + i}")
            if i % 2:
                assert h.wait(60)
            out.append(h.result().rows[0][0])
        return out

    results: dict[int, Any] = {}
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, _in_thread(lambda: work(n))))
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {n: [n * 100 + i for i in range(25)] for n in range(4)}
    assert reads == []


def test_a_forged_reply_notification_is_only_a_hint(pool):
    launcher_connection()
    with raw_connection() as holder, raw_connection() as forger:
        holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        h = pgb.launch(f"SELECT pg_advisory_xact_lock({LOCK_KEY}); SELECT 7")
        pid = _reply_pid(h)
        assert pid is not None
        forger.execute(f"NOTIFY pgbackground_reply_{pid}, '{h.id}'")
        forger.execute(f"NOTIFY pgbackground_reply_{pid}, 'not an id'")
        # A tag that is not the job's (the forger does not know the cookie) is no proof.
        forger.execute(f"NOTIFY pgbackground_reply_{pid}, '{h.id}:{'0' * 16}'")
        assert h.wait(0.5) is False  # the row says it still runs (or waits for its turn)
        assert h.state in ("queued", "running")
        # Another forged hint waits in the connection: result() takes it, finds nothing to
        # consume, and goes on waiting for the real end.
        forger.execute(f"NOTIFY pgbackground_reply_{pid}, '{h.id}'")
        holder.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        assert h.result().rows == [(7,)]


def test_a_wrong_cookie_gets_no_shortcut(pool):
    launcher_connection()
    h = pgb.launch("SELECT 1")
    forged = pgb.Handle(h.id, h.cookie + 1 if h.cookie != -1 else 2)
    with pytest.raises(pgb.InvalidHandle):
        forged.wait(0)
    with pytest.raises(pgb.InvalidHandle):
        forged.result()
    assert h.result().rows == [(1,)]


def test_hints_of_other_jobs_survive_a_wait_on_another(pool):
    launcher_connection()
    first = pgb.launch("SELECT 1")
    second = pgb.launch("SELECT 2")
    elsewhere = _in_thread(lambda: pgb.launch("SELECT 3"))  # not expected on this thread
    assert second.wait(60) and elsewhere.wait(60)
    assert [first.result().rows, second.result().rows] == [[(1,)], [(2,)]]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_on_commit_job_is_not_expected():
    launcher_connection()
    with transaction.atomic():
        h = pgb.launch("SELECT 1", on_commit=True)
        transaction.set_rollback(True)
    hub = reply_hub()
    assert hub is not None and not hub.expects(h.id, h.cookie)
    with pytest.raises(pgb.InvalidHandle):
        h.wait(0)


@pytest.mark.django_db(transaction=True)
def test_the_hub_forgets_the_oldest_beyond_its_bound(monkeypatch):
    monkeypatch.setattr(replies, "MAX_EXPECTED", 3)
    launcher_connection()
    launched = [pgb.launch("SELECT 1") for _ in range(4)]
    hub = reply_hub()
    assert hub is not None
    assert [hub.expects(h.id, h.cookie) for h in launched] == [False, True, True, True]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_the_prepared_launch_survives_a_reset_of_the_callers_session(reset):
    first = pgb.launch("SELECT 1")
    with connection.cursor() as cursor:
        cursor.execute(reset)
    second = pgb.launch("SELECT 2")
    assert second.id > first.id
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgbackground%%'"
        )
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(transaction=True)
def test_a_connection_that_loses_prepared_statements_runs_the_plain_statement():
    """What a transaction pooler does: each statement may reach another server connection."""

    def forget_prepared(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("EXECUTE pgbackground_launch"):
            context["cursor"].execute("DEALLOCATE ALL")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(forget_prepared):
        handles = [pgb.launch(f"SELECT {n}") for n in range(3)]
    assert len({h.id for h in handles}) == 3
    state = prepared._states[connection.connection]
    assert state.unusable
    assert Job.objects.filter(pk__in=[h.id for h in handles], state="queued").count() == 3


def test_the_pools_reply_carries_the_tag_that_proves_the_end(pool):
    """The end is announced with the job's reply tag, computed alike in SQL and in Python; the
    box counts it as proof (wait() then reads no row), a wrong or missing tag as none."""
    conn = launcher_connection()
    with raw_connection() as listener:
        h = pgb.launch("SELECT 1")
        channel = f"pgbackground_reply_{_reply_pid(h)}"
        listener.execute(f"LISTEN {channel}")
        assert h.wait(60)
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert f"{h.id}:{events.reply_tag(h.cookie)}" in payloads

    hub = replies.ReplyHub(conn, ("test",))  # not the process's: only its bookkeeping is used
    hub.expect(h.id, h.cookie)

    def note(payload: str) -> int | None:
        return hub.note(psycopg.Notify(hub.channel, payload, 0))

    assert note(f"{h.id}:{'f' * 16}") is None
    assert note(str(h.id)) == h.id and not hub.take_proven(h.id)  # a hint only
    assert note(f"{h.id}:{events.reply_tag(h.cookie)}") == h.id
    assert hub.take_proven(h.id) and not hub.take_proven(h.id)
    # An end read before its job is expected (another thread read it first) is kept for it.
    later = h.id + 1_000_000
    assert note(f"{later}:{events.reply_tag(7)}") is None
    hub.expect(later, 7)
    assert hub.take_proven(later) and hub.await_end(later, 0)
