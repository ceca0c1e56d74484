"""Bad input, fuzzed with Hypothesis (issue 5): launch() arguments and GUC dictionaries, the
admin's launch form, websocket client messages and cookies, and every handle operation on jobs
in every state. Always a clear error (TypeError / ValueError / TooManyJobs, a form error, an
``{"type": "error"}`` message, close code 4403), never a 500, a crashed consumer or pool, and
never a job created or changed that should not be.

Core bugs found here (fixed since) are kept as regression tests at the end; the fuzzed domains
include their inputs again (integers of any size, 19+ digit form numbers).
"""

from __future__ import annotations

import json
import math
import string
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pgbackground as pgb
from pgbackground.consumers import CLOSE_FORBIDDEN, MAX_CLIENT_MESSAGE
from pgbackground.models import Job, JobResultChunk, Worker
from tests.admin_support import ADD
from tests.helpers import raw_connection, sql
from tests.jobfactory import add_chunks, make_job
from tests.test_consumers import (
    expect_close,
    job_path,
    live_test,
    open_socket,
    recv,
    session_header,
)
from tests.test_consumers import make_user as make_ws_user

pytestmark = pytest.mark.django_db(transaction=True)


def fuzz(examples: int) -> Any:
    return settings(
        deadline=None,
        max_examples=examples,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


INT64 = st.integers(-(2**63), 2**63 - 1)
ANY_INT = st.one_of(INT64, st.integers())  # beyond 64 bits too (huge seconds, huge limits)
JSONISH = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    ANY_INT,
    st.floats(),
    st.text(max_size=30),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.just(object()),
)

SQL_SAMPLES = [
    "SELECT 1",
    "",
    "   \n\t",
    "-- only a comment",
    "/* only a comment */",
    ";",
    "SELECT 1;",
    "SELECT '\x00'",
    "SELECT '\ud800'",
    "VACUUM",
    "COPY pgbackground_job TO STDOUT",
    "BEGIN",
    "x" * 5000,
]
SQLS = st.one_of(st.sampled_from(SQL_SAMPLES), st.text(max_size=80), ANY_VALUE)

DANGEROUS_GUC_NAMES = [
    "session_authorization",
    "SESSION_AUTHORIZATION",
    "role",
    "Role",
    "is_superuser",
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "transaction_isolation",
    "transaction_read_only",
    "client_connection_check_interval",
    "search_path",
    "session_replication_role",
    "default_transaction_read_only",
    "statement_timeout",
    "idle_session_timeout",
    "exit_on_error",
    "log_statement",
    "work_mem",
    "x",
    "pgbt.custom",
    "pgbt.a.b",
    "a;b",
    "a'b",
    'a"b',
    "work_mem; RESET ROLE",
    " role",
    "role ",
    "",
    "1abc",
    "pg_catalog.search_path",
    "n" * 201,
]
DANGEROUS_GUC_VALUES = [
    "pg_temp, public",
    '"$user", pg_temp, public',
    "public; RESET ROLE",
    "'); CREATE TABLE pgbt_pwned (); --",
    "x' , false); CREATE TABLE pgbt_pwned (); --",
    "postgres",
    "x" * 9000,
    "x" * 8192,
    "",
    "on",
    "1",
    "-1",
    "1e400",
    "\x00",
    "\ud800",
    True,
    7,
    2.5,
    math.nan,
    None,
    b"x",
    ["x"],
]
GUC_NAMES = st.one_of(
    st.sampled_from(DANGEROUS_GUC_NAMES),
    st.from_regex(r"[a-z_]{1,12}(\.[a-z_]{1,8})?", fullmatch=True),
    st.text(max_size=12),
    INT64,
)
GUC_VALUES = st.one_of(
    st.sampled_from(DANGEROUS_GUC_VALUES), st.text(max_size=20), INT64, st.floats(), ANY_VALUE
)
GUCS = st.one_of(st.dictionaries(GUC_NAMES, GUC_VALUES, max_size=4), ANY_VALUE)
SECONDS = st.one_of(
    st.floats(), st.floats(min_value=-5, max_value=1e6), ANY_INT, st.booleans(), ANY_VALUE
)
OWNERS = st.sampled_from(["none", "user", "unsaved", "inactive", "pk", "name", "object"])


@pytest.fixture
def users() -> dict[str, Any]:
    inactive = User.objects.create_user("fuzz-inactive", is_active=False)
    return {
        "none": None,
        "user": User.objects.create_user("fuzz-owner"),
        "unsaved": User(username="ghost"),
        "inactive": inactive,
        "pk": inactive.pk,
        "name": "fuzz-owner",
        "object": object(),
    }


# --- launch() ----------------------------------------------------------------------------------


@fuzz(200)
@given(
    sql_text=SQLS,
    kwargs=st.fixed_dictionaries(
        {},
        optional={
            "label": st.one_of(st.text(max_size=210), ANY_VALUE),
            "timeout": SECONDS,
            "gucs": GUCS,
            "owner": OWNERS,
            "max_result_bytes": st.one_of(ANY_INT, st.integers(2**63 - 2, 2**64), ANY_VALUE),
            "on_commit": st.one_of(st.booleans(), ANY_VALUE),
        },
    ),
)
def test_launch_with_arguments_of_any_type(users, sql_text, kwargs):
    check_launch(users, sql_text, kwargs)


# The right types, any values: these reach the server's checks of the settings and the insert.
@fuzz(200)
@given(
    sql_text=st.one_of(st.just("SELECT 1"), st.text(max_size=80), st.sampled_from(SQL_SAMPLES)),
    kwargs=st.fixed_dictionaries(
        {},
        optional={
            "label": st.one_of(st.none(), st.text(max_size=210)),
            "timeout": st.one_of(st.none(), st.floats(), st.integers(-5, 10**9)),
            "gucs": st.dictionaries(
                st.one_of(st.sampled_from(DANGEROUS_GUC_NAMES),
                          st.from_regex(r"[a-z_]{1,12}(\.[a-z_]{1,8})?", fullmatch=True)),
                st.one_of(st.sampled_from(DANGEROUS_GUC_VALUES[:13]), st.text(max_size=20),
                          st.integers(-(2**40), 2**40), st.booleans(),
                          st.floats(allow_nan=False, allow_infinity=False)),
                max_size=4,
            ),
            "owner": st.sampled_from(["none", "user", "inactive"]),
            "max_result_bytes": st.one_of(st.none(), st.integers(-5, 2**63 - 1)),
            "on_commit": st.booleans(),
        },
    ),
)
def test_launch_with_arguments_of_the_right_types(users, sql_text, kwargs):
    check_launch(users, sql_text, kwargs)


def check_launch(users: dict[str, Any], sql_text: Any, kwargs: dict[str, Any]) -> None:
    """launch() returns a handle to a new queued job, or refuses with TypeError, ValueError or
    TooManyJobs and creates nothing."""
    if "owner" in kwargs:
        kwargs["owner"] = users[kwargs["owner"]]
    before = Job.objects.count()
    try:
        h = pgb.launch(sql_text, **kwargs)
    except (TypeError, ValueError, pgb.TooManyJobs) as exc:
        event(f"refused: {type(exc).__name__}")
        assert Job.objects.count() == before
        return
    event("launched" + (" with gucs" if kwargs.get("gucs") else ""))
    assert Job.objects.count() == before + 1
    job = Job.objects.get(pk=h.id)
    assert (job.cookie, job.sql, job.state) == (h.cookie, sql_text, "queued")
    for name, value in (kwargs.get("gucs") or {}).items():
        assert name.lower() not in {"role", "session_authorization", "is_superuser"}
        assert job.gucs[name] == (("on" if value else "off") if isinstance(value, bool)
                                  else str(value))


# GUC dictionaries PostgreSQL accepts but that attack the pool or the next job: each runs on a
# one-slot pool, and the next job on the same slot must see none of it.
DANGEROUS_ACCEPTED = [
    {"search_path": "pg_temp, public"},
    {"search_path": '"$user", pg_temp, public', "work_mem": "64kB"},
    {"pgbt.inject": "'); CREATE TABLE pgbt_pwned (); --"},
    {"pgbt.inject": "x' , false); CREATE TABLE pgbt_pwned (); --"},
    {"pgbt.long": "y" * 8192},
    {"statement_timeout": "1"},
    {"lock_timeout": "1"},
    {"idle_session_timeout": "1"},
    {"exit_on_error": "on"},
    {"client_min_messages": "debug5"},
    {"default_transaction_read_only": "on"},
    {"session_replication_role": "replica"},
    {"standard_conforming_strings": "off"},
    {"bytea_output": "escape"},
    {"default_transaction_isolation": "serializable"},
]
WATCHED = (
    "search_path",
    "work_mem",
    "statement_timeout",
    "lock_timeout",
    "idle_session_timeout",
    "exit_on_error",
    "client_min_messages",
    "default_transaction_read_only",
    "session_replication_role",
    "standard_conforming_strings",
    "bytea_output",
    "default_transaction_isolation",
)
WATCH_SQL = (
    "SELECT "
    + ", ".join(f"current_setting('{n}')" for n in WATCHED)
    + ", coalesce(current_setting('pgbt.inject', true), ''),"
    " coalesce(current_setting('pgbt.long', true), '')"
)


@pytest.fixture
def one_slot(start_pool: Any) -> Any:
    return start_pool("--concurrency", "1")


def run_and_check_next_job(pool: Any, gucs: dict[str, Any], defaults: tuple[Any, ...]) -> None:
    """Run a job with ``gucs``; it ends, and the next job on the same slot sees ``defaults``."""
    h = pgb.launch("SELECT current_setting('search_path'), 1", gucs=gucs)
    assert h.wait(timeout=60)
    assert h.state in ("stopped", "error"), h.state
    if h.state == "error":
        # Only what the setting itself does: a timeout, or the session it ended.
        assert h.error_info().sqlstate in ("57014", "57P05", "08006"), h.error_info()
    assert h.job().gucs.items() >= {k: str(v) for k, v in gucs.items()}.items()
    after = pgb.launch(WATCH_SQL)
    assert after.wait(timeout=60)
    assert after.result().rows == [defaults], gucs
    assert sql("SELECT to_regclass('pgbt_pwned')") == [(None,)]
    assert pool.proc.poll() is None
    assert "unexpected error" not in pool.output and "Traceback" not in pool.output


def pool_defaults() -> tuple[Any, ...]:
    with raw_connection() as fresh:
        return tuple(fresh.execute(WATCH_SQL).fetchone())


@pytest.mark.pool
def test_dangerous_settings_stay_in_their_job(one_slot):
    """Each accepted dangerous dictionary runs; its job ends, no injected statement ran, the
    pool survives, and the next job on the same (single) connection sees the defaults."""
    defaults = pool_defaults()
    for gucs in DANGEROUS_ACCEPTED:
        run_and_check_next_job(one_slot, gucs, defaults)


@pytest.mark.pool
@fuzz(15)
@given(
    picks=st.lists(st.sampled_from(DANGEROUS_ACCEPTED), min_size=1, max_size=3),
    injected=st.text(alphabet=string.printable, max_size=40),
)
def test_drawn_combinations_of_dangerous_settings_stay_in_their_job(one_slot, picks, injected):
    gucs: dict[str, Any] = {}
    for pick in picks:
        gucs.update(pick)
    gucs["pgbt.inject"] = injected + "'); CREATE TABLE pgbt_pwned (); --"
    run_and_check_next_job(one_slot, gucs, pool_defaults())


# --- the admin's launch form -------------------------------------------------------------------

NUMBER_TEXTS = st.one_of(
    st.text(alphabet="0123456789-+.eEinfa ", max_size=12),
    st.sampled_from(["", "1", "0", "-1", "1e309", "nan", "inf", "-inf", "1.5", "1,5", "0x10"]),
    st.text(max_size=6),
)
INT_TEXTS = st.one_of(st.text(alphabet="0123456789-+. ", max_size=25), NUMBER_TEXTS)
GUC_LINES = st.lists(
    st.one_of(
        st.builds(
            lambda n, v: f"{n} = {v}",
            st.sampled_from([n for n in DANGEROUS_GUC_NAMES if "\n" not in n]),
            st.sampled_from(
                [v for v in DANGEROUS_GUC_VALUES if isinstance(v, str) and v != "\ud800"]
            ),
        ),
        st.text(alphabet=string.printable, max_size=30),
    ),
    max_size=4,
).map("\n".join)
FORM_SQL = st.one_of(st.sampled_from([s for s in SQL_SAMPLES if "\ud800" not in s]),
                     st.text(max_size=60))


@pytest.fixture
def root_client() -> Client:
    root = User.objects.create_superuser("fuzz-root")
    client = Client(raise_request_exception=False)
    client.force_login(root)
    return client


@fuzz(80)
@given(
    data=st.fixed_dictionaries(
        {"sql": FORM_SQL},
        optional={
            "label": st.text(max_size=210),
            "timeout": NUMBER_TEXTS,
            "max_result_bytes": INT_TEXTS,
            "gucs": GUC_LINES,
            "fire_and_forget": st.sampled_from(["on", "", "off", "1", "x"]),
        },
    )
)
def test_admin_launch_form_never_500_and_never_creates_a_job_on_bad_input(root_client, data):
    before = Job.objects.count()
    r = root_client.post(ADD, data)
    event(f"HTTP {r.status_code}")
    assert r.status_code in (200, 302), (r.status_code, data)
    if r.status_code == 302:
        assert Job.objects.count() == before + 1
        assert Job.objects.latest("id").sql == data["sql"]
    else:
        form = r.context["form"]
        assert form.errors, data
        assert Job.objects.count() == before


# --- websocket client messages ------------------------------------------------------------------

TEXT_FRAMES = st.one_of(
    st.text(max_size=60),
    JSONISH.map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["snapshot", "Snapshot", "event", "error", "", "snapshot "])},
        optional={"ids": st.one_of(st.lists(INT64, max_size=4), JSONISH), "x": JSONISH},
    ).map(json.dumps),
    st.integers(65_000, 70_000).map(lambda n: json.dumps({"type": "snapshot", "p": "x" * n})),
)
# Frames are never empty: channels' WebsocketCommunicator cannot send an empty one.
FRAMES = st.lists(
    st.one_of(TEXT_FRAMES.filter(bool).map(lambda t: ("text", t)),
              st.binary(min_size=1, max_size=40).map(lambda b: ("bytes", b))),
    min_size=1,
    max_size=6,
)


def expected_job_reply(kind: str, frame: Any) -> str:
    """What JobConsumer answers to one client frame: exactly one message of this type."""
    if kind == "bytes" or len(frame) > MAX_CLIENT_MESSAGE:
        return "error"
    try:
        data = json.loads(frame)
    except ValueError:
        return "error"
    return "snapshot" if isinstance(data, dict) and data.get("type") == "snapshot" else "error"


@fuzz(40)
@given(frames=FRAMES)
def test_job_socket_answers_every_client_frame_once_and_stays_open(frames):
    async def body() -> None:
        from asgiref.sync import sync_to_async

        h = await sync_to_async(pgb.launch)("SELECT 1")
        comm = await open_socket(job_path(h, h.cookie))
        first = await recv(comm)
        assert (first["type"], first["id"]) == ("snapshot", h.id)
        for kind, frame in frames:
            if kind == "text":
                await comm.send_to(text_data=frame)
            else:
                await comm.send_to(bytes_data=frame)
            reply = await recv(comm)
            assert reply["type"] == expected_job_reply(kind, frame), (frame, reply)
            if reply["type"] == "snapshot":
                assert reply["id"] == h.id
        assert await comm.receive_nothing(0.05)
        await comm.disconnect()

    live_test(body)()


@pytest.fixture
def feed_people() -> dict[str, Any]:
    alice = make_ws_user("fz-alice", "view_job")
    bob = make_ws_user("fz-bob", "view_job")
    mine = [pgb.launch("SELECT 1", owner=alice).id for _ in range(3)]
    theirs = [pgb.launch("SELECT 1", owner=bob).id for _ in range(3)]
    nobodys = [pgb.launch("SELECT 1").id]
    sentinel = pgb.launch("SELECT 'sentinel'", owner=alice).id
    return {
        "alice": alice,
        "mine": mine,
        "others": theirs + nobodys,
        "sentinel": sentinel,
        "header": session_header(alice),
    }


@fuzz(30)
@given(data=st.data())
def test_feed_socket_survives_any_frame_and_shows_only_the_owners_jobs(feed_people, data):
    p = feed_people
    known = p["mine"] + p["others"]
    ids = st.lists(st.one_of(st.sampled_from(known), INT64, st.integers(1, 10**6)), max_size=6)
    frames = data.draw(
        st.lists(
            st.one_of(
                FRAMES.map(lambda fs: fs[0]),
                ids.map(lambda i: ("text", json.dumps({"type": "snapshot", "ids": i}))),
            ),
            min_size=1,
            max_size=6,
        )
    )
    visible = set(p["mine"]) | {p["sentinel"]}
    ask_sentinel = json.dumps({"type": "snapshot", "ids": [p["sentinel"]]})

    async def drain_to_sentinel(comm: Any) -> None:
        await comm.send_to(text_data=ask_sentinel)
        while True:
            msg = await recv(comm)
            assert msg["type"] in ("snapshot", "event", "error"), msg
            if msg["type"] != "error":
                assert msg["id"] in visible, ("another owner's job on the feed", msg)
                if msg["id"] == p["sentinel"] and msg["type"] == "snapshot":
                    return

    async def body() -> None:
        comm = await open_socket("/ws/pgbackground/jobs/", p["header"])
        await drain_to_sentinel(comm)  # the snapshot sent on connect, then the sentinel
        for kind, frame in frames:
            if kind == "text":
                await comm.send_to(text_data=frame)
            else:
                await comm.send_to(bytes_data=frame)
            await drain_to_sentinel(comm)
        await comm.disconnect()

    live_test(body)()


ODD_COOKIES = ["", "0", "-0", "+1", " 1", "1 ", "1e3", "0x1", "\uff19", "1_0", "1" * 25, "%00",
               "a&cookie=1"]


@fuzz(40)
@given(cookie=st.one_of(st.text(max_size=30), INT64.map(str), st.sampled_from(ODD_COOKIES)))
def test_job_socket_refuses_any_wrong_cookie_with_4403(cookie):
    async def body() -> None:
        from urllib.parse import quote

        from asgiref.sync import sync_to_async

        h = await sync_to_async(pgb.launch)("SELECT 1")
        if cookie.strip().lstrip("+") == str(h.cookie):
            return
        comm = await open_socket(f"/ws/pgbackground/jobs/{h.id}/?cookie={quote(cookie)}")
        await expect_close(comm, CLOSE_FORBIDDEN)

    live_test(body)()


# --- handles in every state --------------------------------------------------------------------

STATES = ["queued", "running", "stopped", "consumed", "fire_and_forget", "detached",
          "canceled", "error"]
OPS = st.tuples(
    st.sampled_from(["state", "wait0", "result", "result_info", "error_info", "progress",
                     "notices", "cancel", "detach"]),
    st.sampled_from(["right", "right", "right", "wrong_cookie", "unknown_id"]),
    st.one_of(st.none(), st.floats(0, 5), st.just(0.0), st.just(10**4)),
)


def job_in(state: str) -> Job:
    """A job row as the pool leaves it in ``state``; a running one on a worker whose heartbeat
    is an hour ahead, so that no recovery declares it lost while the test runs."""
    if state == "running":
        worker = Worker.objects.create(
            name="fuzz", hostname="h", pid=1, concurrency=1,
            heartbeat_at=timezone.now() + timedelta(hours=1),
        )
        return make_job("running", worker=worker)
    if state in ("queued",):
        return make_job("queued")
    if state in ("canceled", "error"):
        code = "57014" if state == "canceled" else "22012"
        return make_job(state, error_sqlstate=code, error_message="x")
    job = make_job(
        "stopped",
        result_columns=[["x", "text", 25]],
        result_rows=2,
        row_count=2,
        command_tag="SELECT 2",
        consumed=state == "consumed",
        fire_and_forget=state == "fire_and_forget",
        detached=state == "detached",
    )
    if state == "stopped":
        add_chunks(job, n=2, size=5)
    return job


def snapshot(job_id: int) -> tuple[Any, ...]:
    job = Job.objects.get(pk=job_id)
    chunks = JobResultChunk.objects.filter(job_id=job_id).count()
    return (job.state, job.detached, job.consumed, job.cancel_requested_at is not None,
            job.error_sqlstate, chunks)


@fuzz(60)
@given(state=st.sampled_from(STATES), ops=st.lists(OPS, min_size=1, max_size=6))
def test_handle_operations_change_only_what_they_should(state, ops):
    job = job_in(state)
    right = pgb.Handle(job.pk, job.cookie)
    bad = {"wrong_cookie": pgb.Handle(job.pk, job.cookie ^ (1 << 40)),
           "unknown_id": pgb.Handle(job.pk + 10**6, job.cookie)}
    ff = state == "fire_and_forget"
    expect = list(snapshot(job.pk))  # state, detached, consumed, cancel requested, sqlstate, chunks
    for op, who, grace in ops:
        before = snapshot(job.pk)
        st_, detached, consumed = expect[:3]
        terminal = st_ in ("stopped", "canceled", "error")
        if who != "right":
            with pytest.raises(pgb.InvalidHandle):
                _apply(bad[who], op, grace, terminal)
            assert snapshot(job.pk) == before
            continue
        if op == "cancel" and st_ == "running" and not grace:
            grace = 0.5  # without grace cancel() waits for a pool to end the job
        if op == "result" and not terminal:
            op = "wait0"  # result() would wait for a pool
        if op == "cancel":
            _apply(right, op, grace, terminal)
            if st_ == "queued":
                expect[0], expect[3], expect[4] = "canceled", True, "57014"
            elif st_ == "running":
                expect[3] = True
        elif op == "detach":
            _apply(right, op, grace, terminal)
            if not detached:
                expect[1], expect[5] = True, 0
        elif op == "result":
            if detached or ff:
                with pytest.raises(pgb.JobDetached):
                    _apply(right, op, grace, terminal)
            elif st_ in ("canceled", "error"):
                with pytest.raises(pgb.JobError):
                    _apply(right, op, grace, terminal)
            elif consumed:
                with pytest.raises(pgb.ResultConsumed):
                    _apply(right, op, grace, terminal)
            else:
                result = _apply(right, op, grace, terminal)
                assert result.rows == [("xxxxx",), ("xxxxx",)]
                expect[2], expect[5] = True, 0
        else:
            value = _apply(right, op, grace, terminal)
            if op == "wait0":
                assert value is terminal
            if op == "state":
                assert value == st_
        assert snapshot(job.pk) == tuple(expect), (op, who, state)


def _apply(h: pgb.Handle, op: str, grace: float | None, terminal: bool) -> Any:
    if op == "state":
        return h.state
    if op == "wait0":
        return h.wait(0)
    if op == "result":
        return h.result()
    if op == "cancel":
        return h.cancel(grace=grace)
    return getattr(h, op)()


# --- core bugs found here (fixed; kept as regression tests) ---------------------------


def test_max_result_bytes_beyond_bigint_is_a_value_error():
    with pytest.raises(ValueError):
        pgb.launch("SELECT 1", max_result_bytes=2**63)


@pytest.mark.parametrize("call", ["launch", "wait", "cancel"])
def test_huge_integer_seconds_are_a_value_error(call):
    h = pgb.launch("SELECT 1")
    with pytest.raises(ValueError):
        if call == "launch":
            pgb.launch("SELECT 1", timeout=10**400)
        elif call == "wait":
            h.wait(timeout=10**400)
        else:
            h.cancel(grace=10**400)


def test_admin_form_refuses_a_result_limit_beyond_bigint(root_client):
    r = root_client.post(ADD, {"sql": "SELECT 1", "max_result_bytes": "9" * 19})
    assert r.status_code == 200
    assert not Job.objects.exists()


def test_a_deeply_nested_client_frame_gets_an_error_message():
    async def body() -> None:
        from asgiref.sync import sync_to_async

        h = await sync_to_async(pgb.launch)("SELECT 1")
        comm = await open_socket(job_path(h, h.cookie))
        await recv(comm)
        await comm.send_to(text_data="[" * 5000 + "]" * 5000)
        assert json.loads(await comm.receive_from(3))["type"] == "error"
        await comm.disconnect()

    live_test(body)()
