"""Websocket consumers through the demo's real ASGI stack (origin check, sessions, routing), on
the test database: access rules, close codes, snapshot then events, malformed messages, and the
listener's resync after its connection is cut.

Events are produced by the core's own SQL (``Handle.cancel()``) or by the same UPDATE ... RETURNING
+ pg_notify statement a worker runs when it records progress.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client

import pgbackground as pgb
from pgbackground import listener as listener_module
from pgbackground.consumers import CLOSE_FORBIDDEN, CLOSE_LOGIN_REQUIRED
from pgbackground.events import EVENT_COLUMNS, PUBLISH_FROM_J
from pgbackground.listener import close_listener, get_listener

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")
TIMEOUT = 10  # seconds a test waits for one message (a failure, not a pace)


def application() -> Any:
    from demo.asgi import application

    return application


def live_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in its own loop, closing the process's listener at the end."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def body() -> None:
            try:
                await fn(*args, **kwargs)
            finally:
                await close_listener()

        async_to_sync(body)()

    return wrapper


# --- fixtures and helpers -------------------------------------------------------------------------


def make_user(name: str, *perms: str, staff: bool = False, superuser: bool = False) -> User:
    user = User.objects.create_user(name, is_staff=staff or superuser)
    user.is_superuser = superuser
    user.save()
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="pgbackground", codename=codename)
        )
    return user


def session_header(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.fixture
def alice() -> User:
    return make_user("alice", "view_job")


@pytest.fixture
def bob() -> User:
    return make_user("bob", "view_job")


@pytest.fixture
def admin_user() -> User:
    return make_user("boss", "view_all_jobs", staff=True)


def publish(job_id: int, *, pct: float | None = None, message: str | None = None,
            state: str | None = None) -> int:
    """Record a change the way a worker does (one UPDATE that also NOTIFYs); the new seq."""
    with connection.cursor() as cur:
        cur.execute(
            f"""WITH j AS (
                UPDATE pgbackground_job SET
                    state = coalesce(%(state)s, state),
                    started_at = CASE WHEN %(state)s = 'running' THEN clock_timestamp()
                                      ELSE started_at END,
                    progress_pct = coalesce(%(pct)s, progress_pct),
                    progress_message = coalesce(%(message)s, progress_message),
                    progress_at = clock_timestamp(),
                    event_seq = event_seq + 1
                WHERE id = %(id)s RETURNING {EVENT_COLUMNS}
            ) {PUBLISH_FROM_J}""",
            {"id": job_id, "pct": pct, "message": message, "state": state},
        )
        cur.execute("SELECT event_seq FROM pgbackground_job WHERE id = %s", [job_id])
        return int(cur.fetchone()[0])


apublish = sync_to_async(publish)
alaunch_sync = sync_to_async(pgb.launch)


def job_path(h: pgb.Handle, cookie: int | str | None = None) -> str:
    query = "" if cookie is None else f"?cookie={cookie}"
    return f"/ws/pgbackground/jobs/{h.id}/{query}"


async def open_socket(path: str, *headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application(), path, headers=[ORIGIN, *headers])
    connected, _ = await comm.connect(timeout=TIMEOUT)
    assert connected, f"{path} was rejected at the handshake"
    return comm


async def expect_close(comm: WebsocketCommunicator, code: int) -> None:
    """The next output is the close, with ``code``: no message about the job came first."""
    out = await comm.receive_output(TIMEOUT)
    assert out == {"type": "websocket.close", "code": code}
    await comm.disconnect(code)


async def recv(comm: WebsocketCommunicator) -> dict[str, Any]:
    return json.loads(await comm.receive_from(TIMEOUT))


async def recv_until(comm: WebsocketCommunicator, done: Callable[[dict[str, Any]], bool]
                     ) -> list[dict[str, Any]]:
    got = []
    while True:
        msg = await recv(comm)
        got.append(msg)
        if done(msg):
            return got


# --- access ---------------------------------------------------------------------------------------


@live_test
async def test_anonymous_without_cookie_is_refused_with_4403():
    h = await alaunch_sync("SELECT 1")
    comm = await open_socket(job_path(h))
    await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_cookie_gives_access_snapshot_first_then_final_event():
    h = await alaunch_sync("SELECT 1", label="by cookie")
    comm = await open_socket(job_path(h, h.cookie))
    snap = await recv(comm)
    assert snap["type"] == "snapshot"
    assert {k: snap[k] for k in ("id", "state", "pct", "message", "label")} == {
        "id": h.id, "state": "queued", "pct": None, "message": "", "label": "by cookie",
    }
    assert {"seq", "created_at", "started_at", "finished_at", "duration"} <= snap.keys()
    await sync_to_async(h.cancel)()
    final = await recv(comm)
    assert (final["type"], final["id"], final["state"]) == ("event", h.id, "canceled")
    assert final["seq"] > snap["seq"]
    assert final["error"]["sqlstate"] == "57014" and final["finished_at"]
    await comm.disconnect()


@pytest.mark.parametrize("cookie", ["wrong", "1", "-1", "0", "99999999999999999999999", ""])
@live_test
async def test_wrong_or_malformed_cookie_is_refused(cookie):
    h = await alaunch_sync("SELECT 1")
    comm = await open_socket(job_path(h, cookie if cookie != "wrong" else h.cookie + 1))
    await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_unknown_job_is_refused_like_a_wrong_cookie(alice):
    h = await alaunch_sync("SELECT 1")
    for path in (f"/ws/pgbackground/jobs/{h.id + 1000}/?cookie={h.cookie}",
                 f"/ws/pgbackground/jobs/{h.id + 1000}/",
                 "/ws/pgbackground/jobs/9999999999999999999/"):
        comm = await open_socket(path, await sync_to_async(session_header)(alice))
        await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_owner_with_view_job_follows_own_job_without_cookie(alice, bob):
    h = await alaunch_sync("SELECT 1", owner=alice)
    comm = await open_socket(job_path(h), await sync_to_async(session_header)(alice))
    assert (await recv(comm))["id"] == h.id
    await comm.disconnect()
    # Someone else with the same permission may not.
    comm = await open_socket(job_path(h), await sync_to_async(session_header)(bob))
    await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_owner_without_view_permission_needs_the_cookie():
    carol = await sync_to_async(make_user)("carol")
    h = await alaunch_sync("SELECT 1", owner=carol)
    header = await sync_to_async(session_header)(carol)
    await expect_close(await open_socket(job_path(h), header), CLOSE_FORBIDDEN)
    comm = await open_socket(job_path(h, h.cookie), header)
    assert (await recv(comm))["id"] == h.id
    await comm.disconnect()


@live_test
async def test_staff_with_view_all_jobs_and_superusers_follow_any_job(alice, admin_user):
    root = await sync_to_async(make_user)("root", superuser=True)
    h = await alaunch_sync("SELECT 1", owner=alice)
    for user in (admin_user, root):
        comm = await open_socket(job_path(h), await sync_to_async(session_header)(user))
        assert (await recv(comm))["id"] == h.id
        await comm.disconnect()


@live_test
async def test_view_all_jobs_without_staff_is_not_enough(alice):
    eve = await sync_to_async(make_user)("eve", "view_all_jobs")
    h = await alaunch_sync("SELECT 1", owner=alice)
    comm = await open_socket(job_path(h), await sync_to_async(session_header)(eve))
    await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_foreign_origin_is_rejected_at_the_handshake():
    h = await alaunch_sync("SELECT 1")
    for headers in ([(b"origin", b"http://evil.example")], []):
        comm = WebsocketCommunicator(application(), job_path(h, h.cookie), headers=headers)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert not connected


# --- snapshot then events ---------------------------------------------------------------------


@live_test
async def test_progress_events_follow_the_snapshot_in_seq_order_once_each():
    h = await alaunch_sync("SELECT 1")
    await apublish(h.id, state="running")
    first = await open_socket(job_path(h, h.cookie))
    second = await open_socket(job_path(h, h.cookie))
    snaps = [await recv(first), await recv(second)]
    assert [s["state"] for s in snaps] == ["running", "running"]
    assert snaps[0]["started_at"] is not None
    # Each report is read by both sockets before the next is made: a socket that falls behind
    # keeps only the newest event of a job (by design), which this test is not about.
    got: dict[Any, list[dict[str, Any]]] = {first: [], second: []}
    seqs = []
    for pct in (10, 50, 90, 100):
        state = "stopped" if pct == 100 else None
        seq = await apublish(h.id, pct=pct, message=f"step {pct}", state=state)
        seqs.append(seq)
        for comm in (first, second):
            got[comm] += await recv_until(comm, lambda m, seq=seq: m["seq"] >= seq)
    for comm, snap in zip((first, second), snaps, strict=True):
        got_seqs = [m["seq"] for m in got[comm]]
        assert got_seqs == sorted(set(got_seqs)), "duplicate or out-of-order events"
        assert got_seqs[0] > snap["seq"] and got_seqs == seqs
        assert all(m["type"] == "event" for m in got[comm])
        assert [m["pct"] for m in got[comm]] == [10, 50, 90, 100]
        assert got[comm][-1]["state"] == "stopped"
        assert all({"id", "state", "pct", "message", "seq"} <= m.keys() for m in got[comm])
        await comm.disconnect()


@live_test
async def test_a_channel_layer_does_not_duplicate_events(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    h = await alaunch_sync("SELECT 1")
    comm = await open_socket(job_path(h, h.cookie))
    await recv(comm)
    seq = await apublish(h.id, pct=42)
    final = await apublish(h.id, state="stopped")
    got = await recv_until(comm, lambda m: m["seq"] == final)
    assert [m["seq"] for m in got] == [seq, final]
    await comm.disconnect()


@live_test
async def test_final_state_missed_while_the_listener_was_disconnected_still_arrives(admin_user):
    h = await alaunch_sync("SELECT 1")
    await apublish(h.id, state="running")
    comm = await open_socket(job_path(h, h.cookie))
    snap = await recv(comm)
    feed = await open_socket(
        "/ws/pgbackground/jobs/", await sync_to_async(session_header)(admin_user)
    )
    assert (await recv(feed))["seq"] == snap["seq"]
    listener = get_listener()
    pid, connects = listener.backend_pid, listener.connects

    def cut_and_finish_silently() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [pid])
            # Finished while nobody listens, and without any NOTIFY at all.
            cur.execute(
                "UPDATE pgbackground_job SET state = 'stopped', finished_at = clock_timestamp(),"
                " event_seq = event_seq + 1 WHERE id = %s",
                [h.id],
            )

    await sync_to_async(cut_and_finish_silently)()
    final = await recv(comm)
    assert (final["state"], final["type"]) == ("stopped", "snapshot")
    assert final["seq"] > snap["seq"]
    assert listener.connects == connects + 1 and listener.backend_pid != pid
    from_feed = await recv(feed)
    assert (from_feed["id"], from_feed["state"]) == (h.id, "stopped")
    assert from_feed["seq"] == final["seq"]
    await comm.disconnect()
    await feed.disconnect()


@live_test
async def test_listener_starts_with_the_first_subscriber_and_closes_when_idle(monkeypatch):
    monkeypatch.setattr(listener_module, "TICK", 0.05)
    monkeypatch.setattr(listener_module, "IDLE_CLOSE", 0.1)
    h = await alaunch_sync("SELECT 1")
    listener = get_listener()
    assert listener.connects == 0
    comm = await open_socket(job_path(h, h.cookie))
    await recv(comm)
    first_pid = listener.backend_pid
    assert listener.connects == 1 and first_pid
    await comm.disconnect()
    assert listener._task is not None
    await asyncio.wait_for(asyncio.shield(listener._task), TIMEOUT)  # closed by itself
    # The next subscriber opens a new connection and gets its snapshot and events as usual.
    comm = await open_socket(job_path(h, h.cookie))
    await recv(comm)
    assert listener.connects == 2 and listener.backend_pid != first_pid
    await sync_to_async(h.cancel)()
    assert (await recv(comm))["state"] == "canceled"
    await comm.disconnect()


# --- the feed -------------------------------------------------------------------------------------


@live_test
async def test_feed_refuses_anonymous_with_4401_and_users_without_permission_with_4403():
    await expect_close(await open_socket("/ws/pgbackground/jobs/"), CLOSE_LOGIN_REQUIRED)
    nobody = await sync_to_async(make_user)("nobody", staff=True)
    comm = await open_socket("/ws/pgbackground/jobs/", await sync_to_async(session_header)(nobody))
    await expect_close(comm, CLOSE_FORBIDDEN)


@live_test
async def test_feed_shows_own_jobs_to_owners_and_all_jobs_to_staff(alice, bob, admin_user):
    mine = await alaunch_sync("SELECT 1", owner=alice)
    theirs = await alaunch_sync("SELECT 1", owner=bob)
    own_feed = await open_socket(
        "/ws/pgbackground/jobs/", await sync_to_async(session_header)(alice)
    )
    all_feed = await open_socket(
        "/ws/pgbackground/jobs/", await sync_to_async(session_header)(admin_user)
    )
    # Snapshots: the active jobs each may see.
    own_snaps = [await recv(own_feed)]
    all_snaps = [await recv(all_feed), await recv(all_feed)]
    assert {m["id"] for m in own_snaps} == {mine.id}
    assert {m["id"] for m in all_snaps} == {mine.id, theirs.id}
    # Events: bob's progress reaches the staff feed only; then alice's job finishes.
    await apublish(theirs.id, state="running")
    await apublish(theirs.id, pct=30)
    await sync_to_async(mine.cancel)()
    got_all = await recv_until(all_feed, lambda m: m["id"] == mine.id)
    assert [(m["id"], m["state"]) for m in got_all] == [
        (theirs.id, "running"), (theirs.id, "running"), (mine.id, "canceled")]
    got_own = await recv(own_feed)
    assert (got_own["id"], got_own["state"]) == (mine.id, "canceled")
    # Asking for snapshots of ids: only the visible ones come back.
    await own_feed.send_json_to({"type": "snapshot", "ids": [mine.id, theirs.id]})
    answer = await recv(own_feed)
    assert (answer["id"], answer["type"], answer["state"]) == (mine.id, "snapshot", "canceled")
    assert await own_feed.receive_nothing(0.3)
    await own_feed.disconnect()
    await all_feed.disconnect()


# --- malformed client messages --------------------------------------------------------------------


@live_test
async def test_malformed_client_messages_get_an_error_and_the_socket_keeps_working(admin_user):
    h = await alaunch_sync("SELECT 1")
    comm = await open_socket(job_path(h, h.cookie))
    snap = await recv(comm)
    for text in ("not json", "[1, 2]", '{"type": "nonsense"}', "null", "x" * 70_000, '"str"'):
        await comm.send_to(text_data=text)
        reply = await recv(comm)
        assert reply["type"] == "error" and reply["error"]
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await recv(comm))["type"] == "error"
    await comm.send_json_to({"type": "snapshot"})
    again = await recv(comm)
    assert (again["type"], again["seq"]) == ("snapshot", snap["seq"])
    await comm.disconnect()

    feed = await open_socket(
        "/ws/pgbackground/jobs/", await sync_to_async(session_header)(admin_user)
    )
    await recv(feed)
    for bad in ({"type": "snapshot", "ids": "1"}, {"type": "snapshot", "ids": [True]},
                {"type": "snapshot", "ids": [-1]}, {"type": "snapshot", "ids": [1 << 64]},
                {"type": "snapshot", "ids": list(range(1, 1000))}):
        await feed.send_json_to(bad)
        assert (await recv(feed))["type"] == "error"
    await feed.send_json_to({"type": "snapshot", "ids": [h.id]})
    assert (await recv(feed))["id"] == h.id
    await feed.disconnect()
