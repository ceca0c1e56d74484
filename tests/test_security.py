"""Security (issue 5): the documented deployment with a low-privilege jobs login, the deploy
check, handles as capabilities (same error, measured timing), REDACT_SQL / STORE_RESULTS in the
admin, and the IDOR cases the admin / consumer tests do not already cover.

The deployment: roles created in the test database's cluster, all prefixed ``pgbt_`` and dropped
at the end (``DROP OWNED`` first):

- ``pgbt_app`` (NOLOGIN) owns the table ``pgbt_secret``: the application's data;
- ``pgbt_reporting`` (NOLOGIN): the role the application launches reports as;
- ``pgbt_runner`` (LOGIN): the pool's jobs login, ``GRANT pgbt_reporting TO pgbt_runner``,
  CONNECT on the database, USAGE on schema public, EXECUTE on pgbackground_progress;
- ``pgbt_outsider`` (NOLOGIN): a role the runner is not granted;
- ``pgbt_other_app`` (NOLOGIN): granted to the runner only by the test of documented limits.

The pool runs with ``JOBS_DATABASE_URL=postgres://pgbt_runner@...`` (demo/settings.py then sets
``PGBACKGROUND["DATABASE"] = "jobs"``); its bookkeeping connections keep the tests' login.

IDOR routes covered here (two owners, alice and bob; the rest is in test_admin_permissions.py
and test_consumers.py): admin ``<id>/sections/``, ``<id>/csv/`` with a stored result, the bulk
actions "cancel with grace" and "delete finished", the worker page and worker change page; API
``list_jobs(owner=)``, ``stats(owner=)``, ``cancel_all(owner=)``, ``detach_all(owner=)``, a
handle made of one job's id and another job's cookie; the JSON status of
``access.job_status_for``; websocket job socket with another job's cookie and with an inactive
user's session, and the feed of an inactive user.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client, override_settings

import pgbackground as pgb
from pgbackground.access import job_status_for
from pgbackground.consumers import CLOSE_FORBIDDEN, CLOSE_LOGIN_REQUIRED
from pgbackground.models import Job, JobResultChunk
from tests.admin_support import JOBS, WORKERS, job_url, make_user, make_worker
from tests.helpers import sql
from tests.jobfactory import add_chunks
from tests.jobfactory import make_job as make_old_job
from tests.poolproc import ROOT, database_url
from tests.reliability import (
    Events,
    median,
    print_figures,  # noqa: F401 - module fixture, used below
    record,
)
from tests.test_consumers import expect_close, job_path, live_test, open_socket, session_header

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("print_figures"),
]

ROLES = ("pgbt_app", "pgbt_reporting", "pgbt_outsider", "pgbt_other_app", "pgbt_runner")


# --- the deployment ----------------------------------------------------------------------------


def drop_roles() -> None:
    existing = {r[0] for r in sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pgbt\\_%%'")}
    for role in ROLES:
        if role in existing:
            sql(f"DROP OWNED BY {role} CASCADE")
    for role in ROLES:
        sql(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture
def roles():
    db = connection.settings_dict["NAME"]
    drop_roles()
    for role in ROLES[:-1]:
        sql(f"CREATE ROLE {role} NOLOGIN")
    sql("CREATE ROLE pgbt_runner LOGIN")
    sql("GRANT pgbt_reporting TO pgbt_runner")
    sql(f'GRANT CONNECT ON DATABASE "{db}" TO pgbt_runner')
    sql("GRANT USAGE ON SCHEMA public TO pgbt_runner")
    sql("GRANT EXECUTE ON FUNCTION pgbackground_progress(double precision, text) TO pgbt_runner")
    sql("CREATE TABLE pgbt_secret (v text)")
    sql("INSERT INTO pgbt_secret VALUES ('the app''s secret')")
    sql("ALTER TABLE pgbt_secret OWNER TO pgbt_app")
    yield db
    sql("RESET ROLE")
    drop_roles()


def runner_url(db: str) -> str:
    return f"postgres://pgbt_runner@127.0.0.1:5432/{db}"


@pytest.fixture
def runner_pool(roles, start_pool):
    pool = start_pool("--concurrency", "2", env={"JOBS_DATABASE_URL": runner_url(roles)})
    yield pool
    pool.stop()  # before the roles go: the runner's connections must be closed


def launch_as(role: str, text: str, **kwargs) -> pgb.Handle:
    """launch() from Django's connection after SET ROLE (what an app does per request)."""
    sql(f"SET ROLE {role}")
    try:
        return pgb.launch(text, **kwargs)
    finally:
        sql("RESET ROLE")


def launch_running(role: str | None, text: str, **kwargs) -> pgb.Handle:
    """Launch ``text`` (which reports progress 1 first) and block until it did."""
    events = Events()  # listening before the launch: the event cannot be missed
    try:
        h = launch_as(role, text, **kwargs) if role else pgb.launch(text, **kwargs)
        events.wait(lambda e: e["id"] == h.id and e["pct"] == 1)
    finally:
        events.close()
    return h


def outcome(h: pgb.Handle) -> tuple[str, str | None]:
    assert h.wait(timeout=60)
    err = h.error_info()
    return h.state, err.sqlstate if err else None


@pytest.mark.pool
def test_a_job_runs_as_its_launcher_and_the_jobs_login_is_its_ceiling(runner_pool):
    cases = {
        "who": "SELECT current_user::text, session_user::text",
        "secret": "SELECT * FROM pgbt_secret",
        "reset_role_secret": "RESET ROLE; SELECT * FROM pgbt_secret",
        "reset_role_who": "RESET ROLE; SELECT current_user::text",
        "jobs_table": "SELECT * FROM pgbackground_job",
        "reset_role_jobs_table": "RESET ROLE; SELECT cookie FROM pgbackground_job",
        "reset_role_update_jobs": "RESET ROLE; UPDATE pgbackground_job SET state = 'error'",
        "reset_role_chunks": "RESET ROLE; SELECT data FROM pgbackground_jobresultchunk",
        "session_authorization": "SET SESSION AUTHORIZATION postgres",
        "reset_role_session_authorization": "RESET ROLE; SET SESSION AUTHORIZATION postgres",
        "set_role_superuser": "RESET ROLE; SET ROLE postgres",
        "set_role_app": "SET ROLE pgbt_app",
        "set_config_role": "SELECT set_config('role', 'postgres', false)",
        "read_server_file": "RESET ROLE; SELECT pg_read_file('/etc/hostname')",
        "copy_program": "RESET ROLE; COPY pgbt_secret FROM PROGRAM 'true'",
        "terminate_pool": (
            "RESET ROLE; SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'pgbackground control%'"
        ),
        "progress": "SELECT pgbackground_progress(50, 'allowed'); SELECT 'ok'",
    }
    handles = {name: launch_as("pgbt_reporting", text) for name, text in cases.items()}
    got = {name: outcome(h) for name, h in handles.items()}
    assert handles["who"].result().rows == [("pgbt_reporting", "pgbt_runner")]
    assert handles["reset_role_who"].result().rows == [("pgbt_runner",)]
    assert handles["progress"].result().rows == [("ok",)]
    denied = {name for name, (state, code) in got.items() if (state, code) == ("error", "42501")}
    assert denied == set(cases) - {"who", "reset_role_who", "progress"}, got
    assert handles["who"].job().role == "pgbt_reporting"
    assert sql("SELECT count(*) FROM pgbackground_job WHERE state = 'running'") == [(0,)]
    assert runner_pool.proc.poll() is None  # the pool's own connections were not touched
    record("security.denied_to_a_job_as_pgbt_reporting_on_pgbt_runner", sorted(denied))


@pytest.mark.pool
def test_a_launcher_role_the_jobs_login_lacks_fails_42501_with_the_grant_in_the_hint(
    runner_pool,
):
    h = launch_as("pgbt_outsider", "SELECT 1")
    assert outcome(h) == ("error", "42501")
    err = h.error_info()
    assert "GRANT pgbt_outsider TO pgbt_runner" in err.hint
    assert h.job().role == "pgbt_outsider"


def test_superuser_only_settings_are_refused_when_the_launcher_is_not_a_superuser(roles):
    with pytest.raises(ValueError, match="42501"):
        launch_as("pgbt_reporting", "SELECT 1", gucs={"session_replication_role": "replica"})
    before = Job.objects.count()
    with pytest.raises(ValueError, match="cannot be overridden"):
        launch_as("pgbt_reporting", "SELECT 1", gucs={"role": "postgres"})
    assert Job.objects.count() == before


@pytest.mark.pool
def test_documented_limits_of_a_shared_jobs_login(runner_pool):
    """What SECURITY.md says a job can still do (PostgreSQL's rules, not a bug of ours): after
    RESET ROLE it may use any role granted to the jobs login, and it is the same login as every
    other job, so it sees their SQL in pg_stat_activity and may terminate them."""
    sql("GRANT pgbt_other_app TO pgbt_runner")
    other = launch_as("pgbt_reporting", "SET ROLE pgbt_other_app; SELECT current_user::text")
    assert outcome(other) == ("stopped", None)
    assert other.result().rows == [("pgbt_other_app",)]

    victim = launch_running(
        "pgbt_reporting",
        "SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60) -- pgbt-sibling-marker",
    )
    look = (
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pgbt-sibling-' || 'marker%'"
        " AND pid <> pg_backend_pid()"
    )
    as_role = launch_as("pgbt_reporting", look)
    as_login = launch_as("pgbt_reporting", "RESET ROLE; " + look)
    assert as_role.result().rows == [(0,)]  # as the launcher's role: '<insufficient privilege>'
    assert as_login.result().rows == [(1,)]  # as the jobs login: the sibling's SQL
    killer = launch_as(
        "pgbt_reporting",
        "RESET ROLE; SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query LIKE '%pgbt-sibling-' || 'marker%' AND pid <> pg_backend_pid()",
    )
    assert killer.result().rows == [(True,)]
    assert outcome(victim) == ("error", "57P01")


# --- manage.py check --deploy -----------------------------------------------------------------


def deploy_check(**env: str) -> str:
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), **env},
        capture_output=True,
        text=True,
    )
    return out.stdout + out.stderr


def test_deploy_check_warns_about_a_superuser_jobs_login_and_not_about_a_plain_one(roles):
    assert "pgbackground.W001" in deploy_check()  # the tests' login is a superuser
    plain = deploy_check(JOBS_DATABASE_URL=runner_url(roles))
    assert "pgbackground.W001" not in plain and "pgbackground.W002" not in plain, plain


# --- handles ---------------------------------------------------------------------------------


def test_unknown_id_and_wrong_cookie_cost_the_same_lookup():
    """Same error either way (no hint which); the lookup times are measured, not asserted: the
    figures are the medians over a few thousand tries of each, interleaved."""
    h = pgb.launch("SELECT 1")
    wrong = pgb.Handle(h.id, h.cookie ^ (1 << 62))
    unknown = pgb.Handle(h.id + 10**9, h.cookie)
    times: dict[str, list[float]] = {"wrong cookie": [], "unknown id": []}
    errors: set[str] = set()
    for _ in range(3000):
        for name, bad in (("wrong cookie", wrong), ("unknown id", unknown)):
            t0 = time.perf_counter_ns()
            try:
                bad.state  # noqa: B018 - the lookup is the point
            except pgb.InvalidHandle as exc:
                errors.add(f"{type(exc).__name__}: {exc}")
            else:
                raise AssertionError("a bad handle was accepted")
            times[name].append((time.perf_counter_ns() - t0) / 1000)
    assert errors == {"InvalidHandle: invalid pgbackground handle"}
    assert h.state == "queued"
    medians = {k: round(median(v), 1) for k, v in times.items()}
    record("handles.lookup_median_us", medians)
    record(
        "handles.lookup_median_difference_us",
        round(medians["wrong cookie"] - medians["unknown id"], 1),
    )


# --- REDACT_SQL and STORE_RESULTS in the admin -------------------------------------------------

SECRET = "pgbt-secret-token-7f3a"


@pytest.fixture
def root_client() -> Client:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    return client


@pytest.mark.pool
def test_redacted_sql_shows_nowhere_in_the_admin_once_the_job_ran(start_pool, root_client):
    start_pool("--concurrency", "1", env={"PGBACKGROUND_REDACT_SQL": "true"})
    h = pgb.launch(f"SELECT 1 AS n -- password={SECRET}")
    assert h.wait(timeout=60) and h.state == "stopped"
    pages = [
        root_client.get(JOBS).content,
        root_client.get(job_url(h.id)).content,
        root_client.get(job_url(h.id, "sections/")).content,
        root_client.get(job_url(h.id, "state/")).content,
        b"".join(root_client.get(job_url(h.id, "csv/")).streaming_content),
    ]
    assert [SECRET.encode() in page for page in pages] == [False] * len(pages)
    assert b"SQL redacted" in pages[1]
    assert root_client.get(JOBS, {"q": SECRET}).context["cl"].result_count == 0
    assert h.result().rows == [(1,)]  # the result itself is kept (REDACT_SQL is about the SQL)
    # Documented: what PostgreSQL itself said about the SQL is kept as it said it.
    failed = pgb.launch(f'SELECT "{SECRET}"')
    assert failed.wait(timeout=60)
    assert SECRET not in failed.job().sql
    assert SECRET in failed.error_info().message


@pytest.mark.pool
def test_redact_sql_also_covers_a_job_whose_worker_was_lost(start_pool):
    from django.conf import settings
    from django.test import override_settings

    env = {"PGBACKGROUND_REDACT_SQL": "true"}
    doomed = start_pool("--concurrency", "1", env=env)
    h = launch_running(
        None, f"SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60) -- {SECRET}"
    )
    start_pool("--concurrency", "1", env=env)  # the survivor that resolves the lost job
    doomed.kill()
    # Every process shares the setting (wait() may be the one that resolves the lost job).
    with override_settings(PGBACKGROUND={**settings.PGBACKGROUND, "REDACT_SQL": True}):
        assert h.wait(timeout=60)
    assert h.error_info().sqlstate == "08006"
    assert SECRET not in h.job().sql


@pytest.mark.pool
def test_store_results_off_leaves_nothing_for_the_admin_to_show(pool, root_client):
    half = len(SECRET) // 2
    with override_settings(PGBACKGROUND={"STORE_RESULTS": False}):
        h = pgb.launch(f"SELECT concat('{SECRET[:half]}', '{SECRET[half:]}') AS s")
    assert h.wait(timeout=60) and h.state == "stopped"
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    assert root_client.get(job_url(h.id, "csv/")).status_code == 404
    page = root_client.get(job_url(h.id))
    assert page.status_code == 200
    assert SECRET.encode() not in page.content  # no result preview: no row was kept


# --- IDOR: the routes the other suites do not cover --------------------------------------------


@pytest.fixture
def two_owners():
    alice = make_user("alice", "view_job", "launch_job", "delete_job")
    bob = make_user("bob", "view_job", "launch_job")
    return alice, bob


def login(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_idor_admin_sections_csv_bulk_actions_and_workers(two_owners):
    alice, bob = two_owners
    worker = make_worker(name="w-idor")
    running = make_old_job("running", owner=bob, label="bob-running-label", worker=worker)
    queued = make_old_job("queued", owner=bob, sql=f"SELECT '{SECRET}'")
    done = make_old_job(
        "stopped", owner=bob, sql=f"SELECT '{SECRET}'", result_columns=[["x", "text", 25]],
        result_rows=2, row_count=2, command_tag="SELECT 2",
    )
    add_chunks(done, n=2, size=5)
    own = make_old_job(
        "stopped", owner=alice, result_columns=[["x", "text", 25]], result_rows=2, row_count=2,
        command_tag="SELECT 2",
    )
    add_chunks(own, n=2, size=5)
    c = login(alice)
    for job in (running, queued, done):
        assert c.get(job_url(job.pk, "sections/")).status_code == 404
        assert c.get(job_url(job.pk, "csv/")).status_code == 404
    assert c.get(job_url(own.pk, "csv/")).status_code == 200  # her own result: yes
    before = {j.pk: (j.state, j.detached, j.cancel_requested_at) for j in (running, queued, done)}
    c.post(JOBS, {"action": "cancel_with_grace", "grace": "5",
                  "_selected_action": [running.pk, queued.pk]})
    c.post(JOBS, {"action": "delete_finished", "_selected_action": [done.pk]})
    after = {
        j.pk: (j.state, j.detached, j.cancel_requested_at)
        for j in Job.objects.filter(pk__in=list(before))
    }
    assert after == before
    assert JobResultChunk.objects.filter(job_id=done.pk).count() == 2
    for page in (c.get(WORKERS), c.get(f"{WORKERS}{worker.pk}/change/")):
        assert page.status_code == 200
        assert b"bob-running-label" not in page.content
        assert f"/{running.pk}/change/".encode() not in page.content
    # Her own finished job may go with delete_job.
    c.post(JOBS, {"action": "delete_finished", "_selected_action": [own.pk]})
    assert not Job.objects.filter(pk=own.pk).exists()


def test_idor_api_by_owner_and_cross_job_cookies(two_owners):
    alice, bob = two_owners
    mine = [pgb.launch("SELECT 1", owner=alice) for _ in range(2)]
    theirs = [pgb.launch("SELECT 2", owner=bob) for _ in range(2)]
    assert {j.id for j in pgb.list_jobs(owner=alice)} == {h.id for h in mine}
    assert pgb.stats(owner=alice).workers_launched == 2
    assert pgb.stats(owner=alice).workers_active == 2
    # A handle is the capability of one job: another job's cookie opens nothing.
    crossed = pgb.Handle(theirs[0].id, mine[0].cookie)
    for op in (lambda h: h.state, lambda h: h.cancel(), lambda h: h.detach(),
               lambda h: h.result_info()):
        with pytest.raises(pgb.InvalidHandle):
            op(crossed)
    assert pgb.detach_all(owner=alice) == 2
    assert pgb.cancel_all(owner=alice) == 2
    states = dict(Job.objects.values_list("pk", "state"))
    assert [states[h.id] for h in theirs] == ["queued", "queued"]
    assert not Job.objects.filter(owner=bob, detached=True).exists()
    assert pgb.stats(owner=bob).workers_canceled == 0
    # The JSON status (the demo's polling fallback) follows the same rules as the sockets.
    assert job_status_for(alice, theirs[0].id, None) is None
    assert job_status_for(alice, theirs[0].id, mine[0].cookie) is None
    assert job_status_for(alice, mine[0].id, None)["id"] == mine[0].id
    assert job_status_for(None, theirs[0].id, theirs[0].cookie)["id"] == theirs[0].id


@live_test
async def test_idor_websockets_other_jobs_cookie_and_inactive_users():
    from tests.test_consumers import make_user as make_ws_user

    alice = await sync_to_async(make_ws_user)("ws-alice", "view_job")
    bob = await sync_to_async(make_ws_user)("ws-bob", "view_job")
    mine = await sync_to_async(pgb.launch)("SELECT 1", owner=alice)
    theirs = await sync_to_async(pgb.launch)("SELECT 1", owner=bob)
    # Bob's job with the cookie of Alice's job: refused like any wrong cookie.
    await expect_close(await open_socket(job_path(theirs, mine.cookie)), CLOSE_FORBIDDEN)
    header = await sync_to_async(session_header)(alice)
    alice.is_active = False
    await sync_to_async(alice.save)()
    # Deactivated: her session no longer opens her own job, nor the feed.
    await expect_close(await open_socket(job_path(mine), header), CLOSE_FORBIDDEN)
    await expect_close(await open_socket("/ws/pgbackground/jobs/", header), CLOSE_LOGIN_REQUIRED)


# --- NOTIFY is not authenticated ---------------------------------------------------------------
# PostgreSQL lets any session NOTIFY any channel (no privilege is checked): every job, through
# the jobs login, and any role that may connect can speak on pgbackground's channels.


@pytest.mark.pool
def test_a_forged_cancel_notification_cancels_no_job(runner_pool):
    victim = launch_running(
        "pgbt_reporting",
        "SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(1); SELECT 'finished'",
    )
    forger = launch_as(
        "pgbt_reporting", f"""SELECT pg_notify('pgbackground_cancel', '{{"id": {victim.id}}}')"""
    )
    assert outcome(forger) == ("stopped", None)
    assert outcome(victim) == ("stopped", None)
    assert forger.job().finished_at < victim.job().finished_at  # it ran while the victim ran


@pytest.mark.pool
def test_a_forged_terminal_notification_does_not_end_wait(runner_pool):
    import threading

    from pgbackground.db import discard_launcher_connection, launcher_connection
    from tests.helpers import wait_until

    victim = launch_running(
        "pgbt_reporting", "SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(2)"
    )
    seen: dict[str, object] = {}
    ready = threading.Event()

    def waiter() -> None:
        try:
            seen["pid"] = launcher_connection().info.backend_pid
            ready.set()
            seen["returned"] = victim.wait(timeout=30)
            seen["state"] = victim.state
        finally:
            discard_launcher_connection()
            connection.close()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert ready.wait(30)
    # wait() has LISTENed once its connection ran the LISTEN (or, later, a recovery check).
    wait_until(
        lambda: sql(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND (query LIKE %s OR query LIKE %s)",
            [seen["pid"], f'%LISTEN "pgbackground_job_{victim.id}"%', "%dead AS%"],
        )
    )
    launch_as("pgbt_reporting", f"SELECT pg_notify('pgbackground_job_{victim.id}', 'stopped')")
    thread.join(60)
    assert seen["returned"] is True
    assert seen["state"] == "stopped", "wait() returned while the job was still running"


@live_test
async def test_a_forged_event_never_reaches_a_live_page(roles):
    import json as jsonlib

    from tests.helpers import raw_connection

    h = await sync_to_async(pgb.launch)("SELECT 1")
    comm = await open_socket(job_path(h, h.cookie))
    first = jsonlib.loads(await comm.receive_from(10))
    assert first["state"] == "queued"
    forged = jsonlib.dumps(
        {"id": h.id, "state": "stopped", "pct": 100, "message": "forged", "seq": 10**9}
    )

    def forge() -> None:
        with raw_connection() as c:
            c.execute("SET ROLE pgbt_reporting")
            c.execute("SELECT pg_notify('pgbackground_events', %s)", [forged])

    await sync_to_async(forge)()
    await sync_to_async(h.cancel)()
    nxt = jsonlib.loads(await comm.receive_from(10))
    await comm.disconnect()
    assert (nxt["state"], nxt["message"]) == ("canceled", ""), nxt
