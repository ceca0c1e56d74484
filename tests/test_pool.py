"""The runworkers pool's fault paths and guarantees, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import pgbackground as pgb
from pgbackground.models import Worker
from tests.helpers import EventListener, raw_connection, sql, wait_until
from tests.poolproc import ROOT

pytestmark = [pytest.mark.pool, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def table():
    sql("CREATE TABLE hits (job text)")
    yield "hits"
    sql("DROP TABLE IF EXISTS hits")


def started(h: pgb.Handle, events: EventListener) -> None:
    """Block until the job reported progress 1 (its first statement ran)."""
    events.wait_for(h.id, lambda e: e["pct"] == 1)


@pytest.fixture
def events():
    listener = EventListener()
    yield listener
    listener.close()


def backend_alive(pid: int) -> bool:
    return bool(sql("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]))


def test_kill_9_mid_job_ends_the_job_with_08006(start_pool, events, table):
    pool = start_pool("--concurrency", "1")
    h = pgb.launch(
        "INSERT INTO hits VALUES ('x'); SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)"
    )
    started(h, events)
    backend = h.job().backend_pid
    pool.kill()
    # No pool is left: wait() itself notices the silent worker (WORKER_LOST_AFTER = 1.5 s).
    assert h.wait(timeout=60)
    assert h.state == "error"
    err = h.error_info()
    assert (err.sqlstate, err.message) == ("08006", "lost connection to worker process")
    with pytest.raises(pgb.WorkerLost):
        h.result()
    worker = Worker.objects.get(pid=pool.pid)
    assert worker.stopped_at is not None and worker.stop_reason.startswith("lost")
    # The orphaned backend notices its client is gone (client_connection_check_interval).
    wait_until(lambda: not backend_alive(backend), timeout=30)
    assert sql("SELECT count(*) FROM hits") == [(0,)]


def test_other_pools_recover_a_dead_pools_jobs_and_carry_on(start_pool, events):
    doomed = start_pool("--concurrency", "1")
    h = pgb.launch("SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)")
    started(h, events)
    survivor = start_pool("--concurrency", "1")
    doomed.kill()
    survivor.expect(f"job {h.id} error 08006")
    assert h.state == "error"
    assert pgb.launch("SELECT 'after'").result().rows == [("after",)]
    restarted = start_pool("--concurrency", "1")
    survivor.stop()
    assert pgb.launch("SELECT 'restarted'").result().rows == [("restarted",)]
    assert restarted.proc.poll() is None


def test_sigterm_lets_a_running_job_finish(pool, events, table):
    h = pgb.launch(
        "SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(0.5);"
        " INSERT INTO hits VALUES ('done'); SELECT 'finished'"
    )
    started(h, events)
    assert pool.stop() == 0
    assert h.state == "stopped"
    assert h.result().rows == [("finished",)]
    assert sql("SELECT job FROM hits") == [("done",)]
    assert Worker.objects.get(pid=pool.pid).stop_reason == "shutdown"
    assert "shutting down: 1 running job(s)" in pool.output


def test_sigterm_cancels_a_job_longer_than_the_grace(start_pool, events, table):
    pool = start_pool("--concurrency", "1", "--shutdown-grace", "0.3")
    h = pgb.launch(
        "INSERT INTO hits VALUES ('x'); SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)"
    )
    started(h, events)
    queued = pgb.launch("SELECT 'never started'")
    assert pool.stop() == 0
    assert h.state == "canceled"
    err = h.error_info()
    assert err.sqlstate == "57014" and "shutting down" in err.message
    assert sql("SELECT count(*) FROM hits") == [(0,)]
    assert queued.state == "queued"  # a stopping pool claims nothing new


def _exit_code(pool, timeout: float) -> int:
    """The pool's exit code; its output in the failure if it does not exit in time."""
    try:
        return pool.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the pool did not exit within {timeout} s; its output:\n{pool.output}")


def _signal_the_process(pid: int, signum: int) -> None:
    os.kill(pid, signum)


def _signal_a_thread_other_than_main(pid: int, signum: int) -> None:
    """What the kernel may do with a process-directed signal: hand it to any thread."""
    import ctypes

    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert tids, "the pool runs threads besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    sys_tgkill = 234  # x86_64
    assert libc.syscall(sys_tgkill, pid, tids[0], signum) == 0, ctypes.get_errno()


@pytest.mark.parametrize(
    "deliver",
    [
        _signal_the_process,
        pytest.param(
            _signal_a_thread_other_than_main,
            marks=pytest.mark.skipif(
                sys.platform != "linux" or os.uname().machine != "x86_64",
                reason="tgkill via its x86_64 syscall number",
            ),
        ),
    ],
)
def test_second_signal_cancels_at_once(start_pool, events, deliver):
    pool = start_pool("--concurrency", "1", "--shutdown-grace", "600")
    h = pgb.launch("SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)")
    started(h, events)
    pool.signal(signal.SIGTERM)
    pool.expect("shutting down")
    deliver(pool.proc.pid, signal.SIGINT)
    assert _exit_code(pool, 30) == 0  # well before the 60 s job would end on its own
    assert h.state == "canceled"


def test_terminated_job_connection_reports_57p01_and_the_slot_recovers(start_pool, events):
    pool = start_pool("--concurrency", "1")
    h = pgb.launch("SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)")
    started(h, events)
    sql("SELECT pg_terminate_backend(%s)", [h.job().backend_pid])
    assert h.wait(30)
    assert h.state == "error"
    assert h.error_info().sqlstate == "57P01"
    assert pgb.launch("SELECT 'recovered'").result().rows == [("recovered",)]
    assert pool.proc.poll() is None


def test_terminated_control_and_listener_connections_are_reopened(pool):
    assert pgb.launch("SELECT 1").result().rows == [(1,)]
    victims = sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database()"
        " AND application_name IN (%s, %s, %s)",
        [
            f"pgbackground listener w{pool.worker_id}",
            f"pgbackground control w{pool.worker_id} s0",
            f"pgbackground control w{pool.worker_id} s1",
        ],
    )
    assert len(victims) == 3  # one listener, two slots' control connections
    pool.expect("reconnecting")
    # Jobs queued while the pool was reconnecting still run.
    handles = [pgb.launch(f"SELECT {i}") for i in range(5)]
    assert [h.result().rows for h in handles] == [[(i,)] for i in range(5)]
    assert pool.proc.poll() is None


def test_every_job_runs_exactly_once_across_pools(start_pool, table):
    start_pool("--concurrency", "2")
    start_pool("--concurrency", "2")
    handles = [pgb.submit(f"INSERT INTO hits VALUES ('{i}')") for i in range(300)]
    for h in handles:
        assert h.wait(120)
    assert sql("SELECT count(*), count(DISTINCT job) FROM hits") == [(300, 300)]
    workers = sql("SELECT count(DISTINCT worker_id) FROM pgbackground_job")
    assert workers[0][0] >= 1


def test_a_deep_queue_runs_in_order_each_job_once(start_pool, table):
    # Queued before the pool starts: each outcome is recorded by the statement that claims the
    # next job.
    handles = [
        pgb.submit(f"INSERT INTO hits VALUES ('{i}'); SELECT pg_backend_pid()") for i in range(40)
    ]
    start_pool("--concurrency", "1")
    for h in handles:
        assert h.wait(120)
    assert {h.state for h in handles} == {"stopped"}
    assert sql("SELECT job FROM hits ORDER BY ctid") == [(str(i),) for i in range(40)]
    claimed_in_order = sql(
        "SELECT started_at > lag(started_at) OVER (ORDER BY id) FROM pgbackground_job"
        " WHERE id = ANY(%s) ORDER BY id OFFSET 1",
        [[h.id for h in handles]],
    )
    assert claimed_in_order == [(True,)] * 39


def test_heartbeats_advance(pool):
    first = Worker.objects.get(pid=pool.pid).heartbeat_at
    wait_until(lambda: Worker.objects.get(pid=pool.pid).heartbeat_at > first, timeout=10)


def test_runworkers_help_and_bad_arguments():
    out = subprocess.run(
        [sys.executable, "manage.py", "runworkers", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--concurrency", "--shutdown-grace", "--worker-id"):
        assert option in out
    bad = subprocess.run(
        [sys.executable, "manage.py", "runworkers", "--concurrency", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--concurrency must be at least 1" in bad.stderr


def test_a_claim_whose_reply_was_lost_is_queued_again_and_runs_once(pool, table):
    """A claim can commit while its connection dies before the reply reaches the slot: the job
    is then 'running' under a live worker that does not run it. The pool's heartbeat finds it
    (no slot holds it) and queues it again; it then runs, once."""
    cookie = 4242
    (job_id,) = sql(
        "INSERT INTO pgbackground_job (cookie, sql, label, role, gucs, max_result_bytes,"
        " fire_and_forget, notices, state, started_at, worker_id)"
        f" VALUES (%s, 'INSERT INTO {table} VALUES (''orphan'') RETURNING job', 'orphan',"
        " current_user, '{}', 1000000, false, '[]', 'running', now(), %s) RETURNING id",
        [cookie, pool.worker_id],
    )[0]
    h = pgb.Handle(job_id, cookie)
    assert h.wait(30)
    assert h.state == "stopped"
    assert h.result().rows == [("orphan",)]
    assert sql(f"SELECT job FROM {table}") == [("orphan",)]
    pool.expect(f"job {job_id}: its claim by worker {pool.worker_id} committed but never")


def test_queue_notifications_beyond_the_slots_leave_no_empty_claims_behind():
    """While every slot claims on its own (a deep queue), each NOTIFY of a new job would leave a
    token behind, and each token one empty claim once the queue is drained: at most one per
    slot is kept."""
    from pgbackground.pool import Pool

    p = Pool(concurrency=2)
    for _ in range(1000):
        p.wake_one()
    p.wait_for_work(0)
    p.wait_for_work(0)
    assert p._tokens == 0


def test_per_job_lines_have_a_logger_of_their_own(start_pool):
    """A line per finished job under pgbackground.jobs: at WARNING, failed jobs only."""
    quiet = start_pool("--concurrency", "1", env={"PGBACKGROUND_JOBS_LOG_LEVEL": "WARNING"})
    good, bad = pgb.launch("SELECT 1"), pgb.launch("SELECT 1/0")
    assert good.wait(60) and bad.wait(60)
    quiet.expect(f"WARNING pgbackground.jobs: job {bad.id} error in")
    assert f"job {good.id} stopped" not in quiet.output
    quiet.stop()
    loud = start_pool("--concurrency", "1")
    h = pgb.launch("SELECT 2")
    assert h.wait(60)
    loud.expect(f"INFO pgbackground.jobs: job {h.id} stopped in")


def test_the_queue_channel_is_not_listened_to_while_every_slot_is_busy(start_pool):
    """Launches while no slot waits wake nobody; the first slot to wait makes the listener
    listen again, and the jobs queued meanwhile run, without the poll interval's help."""
    pool = start_pool(
        "--concurrency",
        "1",
        env={"PGBACKGROUND_POLL_INTERVAL": "600", "PGBACKGROUND_LOG_LEVEL": "DEBUG"},
    )
    key = 8_615_777
    events = EventListener()
    with raw_connection() as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        busy = pgb.launch(f"SELECT pg_advisory_lock({key}); SELECT pg_advisory_unlock({key})")
        events.wait_for(busy.id, lambda e: e["state"] == "running")
        queued = [pgb.launch(f"SELECT {n}") for n in range(3)]
        pool.expect("every slot is busy: not listening to the queue channel")
        holder.execute("SELECT pg_advisory_unlock(%s)", [key])
    events.close()
    assert all(h.wait(30) for h in [busy, *queued])
    pool.expect("a slot waits for work: listening to the queue channel again")
    later = pgb.launch("SELECT 'later'")
    assert later.wait(30)
    assert later.result().rows == [("later",)]


@pytest.mark.django_db(transaction=True)
def test_the_claim_looks_after_the_slots_last_claim_then_from_the_head():
    """Claims start after the slot's previous one (not over the dead index entries of every job
    claimed since VACUUM); a job queued behind that point is taken by the claim from the head
    that follows one that found nothing, and by the periodic claim from the head even while the
    queue stays deep."""
    from pgbackground import pool as pool_module

    with raw_connection() as conn:
        (worker,) = conn.execute(
            "INSERT INTO pgbackground_worker (name, hostname, pid, concurrency)"
            " VALUES ('test', 'test', 1, 1) RETURNING id"
        ).fetchone()

        def claim(after):
            rows = pool_module._CLAIM.run(conn, {"worker": worker, "pid": 0, "after": after})
            return rows[0][0] if rows else None

        low, mid, high = (pgb.launch(f"SELECT {n}").id for n in range(3))
        assert claim(mid) == high  # after the hint, the lower ones wait
        assert claim(high) is None
        assert claim(0) == low  # from the head
        assert claim(0) == mid
        assert claim(0) is None

    class FakeSlot:
        _claims = 0
        _last_claimed: int | None = 7
        _claim_after = pool_module.Slot._claim_after
        _claimed = pool_module.Slot._claimed

    slot = FakeSlot()
    every = pool_module.CLAIM_FROM_HEAD_EVERY
    hints = [slot._claim_after() for _ in range(2 * every)]
    assert hints.count(0) == 2 and hints[every - 1] == 0 and set(hints) == {7, 0}
    # Nothing after the hint: look again at once, from the head; nothing there: wait.
    assert slot._claimed(None, 0, 7) == (None, True)
    assert slot._claim_after() == 0
    assert slot._claimed(None, 0, 0) == (None, False)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_row", [True, False])
def test_a_retried_outcome_keeps_the_result_its_first_attempt_stored(in_row):
    """The control connection can die after the outcome committed and before its reply: the
    slot records again, finds the job no longer running, and must not drop the result."""
    from pgbackground import pool as pool_module
    from pgbackground.executor import Outcome, _Reporter
    from pgbackground.results import TypeNames, encode_values

    h = pgb.launch("SELECT 42")
    with raw_connection() as conn:
        (worker,) = conn.execute(
            "INSERT INTO pgbackground_worker (name, hostname, pid, concurrency)"
            " VALUES ('test', 'test', 1, 1) RETURNING id"
        ).fetchone()
        (claimed,) = pool_module._CLAIM.run(conn, {"worker": worker, "pid": 0, "after": 0})
        assert claimed[0] == h.id
        outcome = Outcome(
            command_tag="SELECT 1", row_count=1, columns=[("?column?", 23, -1)], result_set=0,
            result_rows=1, result_bytes=3, tail=encode_values([b"42"], 1), tail_seq=0,
            chunks_stored=not in_row,
        )
        assert pool_module.result_in_row(outcome) is in_row
        params = pool_module.outcome_params(h.id, worker, outcome, _Reporter(0))
        params["columns"] = TypeNames().columns_json(conn, outcome.columns or [])
        record = pool_module._RECORDS[in_row, False]
        assert [r[:2] for r in record.run(conn, params)] == [(h.id, "stopped")]
        assert record.run(conn, params) == []  # the retry: already recorded
    assert h.result().rows == [(42,)]
