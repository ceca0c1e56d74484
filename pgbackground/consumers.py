"""Websocket consumers: one job (``ws/pgbackground/jobs/<id>/``) and the feed of the jobs a user
may see (``ws/pgbackground/jobs/``).

A socket first receives a snapshot of the current state, then live events from this process's
:class:`~pgbackground.listener.EventListener`. Every message is a JSON object with at least
``type`` ("snapshot" or "event"), ``id``, ``state``, ``pct``, ``message`` and ``seq``; a socket
never receives a ``seq`` of a job lower than or equal to one it was already sent, so stale events
and duplicates are dropped here already (clients should still compare).

Client messages (optional): ``{"type": "snapshot"}`` re-sends the job's snapshot;
``{"type": "snapshot", "ids": [...]}`` on the feed sends snapshots of those jobs (the ones the user
may see: what a page shows). Anything else gets ``{"type": "error", ...}``; nothing closes the
socket.

Refusals: the socket is accepted, then closed with :data:`CLOSE_FORBIDDEN` (4403) — the same for an
unknown job, a job of someone else and a wrong cookie — so that a browser can read the code.
:data:`CLOSE_LOGIN_REQUIRED` (4401) closes an anonymous feed; :data:`CLOSE_UNAVAILABLE` (4503) a
socket whose server cannot reach the database (clients fall back to polling).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import psycopg
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .access import FeedScope, feed_scope, may_view, parse_cookie
from .listener import EventListener, ListenerUnavailableError, get_listener
from .snapshots import MAX_SNAPSHOT_JOBS, TERMINAL_STATES, Snapshot

logger = logging.getLogger("pgbackground.consumers")

CLOSE_LOGIN_REQUIRED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNAVAILABLE = 4503
# Client messages longer than this are answered with an error, unread.
MAX_CLIENT_MESSAGE = 64 * 1024
# A feed's snapshot on connect: active jobs and those finished within this time.
FEED_RECENT = timedelta(minutes=5)
# Jobs whose last state a feed socket remembers before forgetting the finished ones.
FEED_STATES_KEPT = 10_000
# Jobs whose last sent seq a socket remembers before forgetting the finished ones.
SEQS_KEPT = 10_000
# Events never use a channel layer (see pgbackground.listener): this alias is never configured,
# so consumers open no channel on Redis even when CHANNEL_LAYERS has one.
NO_CHANNEL_LAYER = "pgbackground.no-channel-layer"


class _Outbox:
    """Events waiting to be sent: the newest per job, in arrival order, stale ones dropped."""

    def __init__(self) -> None:
        self.pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.sent_seq: dict[int, int] = {}
        self.sent_terminal: set[int] = set()
        self.wake = asyncio.Event()

    def put(self, message: dict[str, Any]) -> None:
        job_id, seq = int(message["id"]), int(message["seq"])
        if seq <= self.sent_seq.get(job_id, -1):
            return
        held = self.pending.get(job_id)
        if held is None or seq >= int(held["seq"]):
            self.pending[job_id] = message
            self.wake.set()

    def take(self) -> dict[str, Any] | None:
        while self.pending:
            job_id, message = self.pending.popitem(last=False)
            if int(message["seq"]) > self.sent_seq.get(job_id, -1):
                self.sent_seq[job_id] = int(message["seq"])
                if message["state"] in TERMINAL_STATES:
                    self._forget_finished(job_id)
                return message
        self.wake.clear()
        return None


    def _forget_finished(self, job_id: int) -> None:
        # A long-lived feed sees many jobs: past SEQS_KEPT, forget those that finished (their
        # seq no longer moves; a stray late duplicate is harmless, clients compare seq too).
        self.sent_terminal.add(job_id)
        if len(self.sent_seq) > SEQS_KEPT:
            for done in self.sent_terminal:
                self.sent_seq.pop(done, None)
            self.sent_terminal.clear()


class _LiveConsumer(AsyncWebsocketConsumer):
    """Snapshot first, then events; an outbox and a sender task per socket."""

    channel_layer_alias = NO_CHANNEL_LAYER

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outbox = _Outbox()
        self.listener: EventListener | None = None
        self._sender: asyncio.Task[None] | None = None
        self._subscribed = False
        self._closed = False

    # Subscriber protocol: called by the listener.
    def deliver(self, message: dict[str, Any]) -> None:
        self.outbox.put(message)

    async def resync(self, since: datetime) -> None:
        raise NotImplementedError

    async def refuse(self, code: int) -> None:
        """Accept then close with ``code``: a close before accepting reaches browsers as 1006."""
        await self.accept()
        await self.close(code=code)
        self._closed = True

    async def start_live(self) -> None:
        """Send what the snapshot put in the outbox, then whatever the listener delivers."""
        self._sender = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        while True:
            await self.outbox.wake.wait()
            while (message := self.outbox.take()) is not None:
                await self.send(text_data=json.dumps(message, separators=(",", ":")))

    def put_snapshots(self, snaps: list[Snapshot]) -> None:
        for snap in snaps:
            self.outbox.put(snap.message)

    async def disconnect(self, code: int) -> None:
        self._closed = True
        if self.listener is not None and self._subscribed:
            self.listener.unsubscribe(self)
        if self._sender is not None:
            self._sender.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed:
            return
        if text_data is None or len(text_data) > MAX_CLIENT_MESSAGE:
            await self.send_error("expected a JSON text message")
            return
        try:
            data = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: '[' * 5000 nests too deep
            await self.send_error("not JSON")
            return
        if not isinstance(data, dict) or data.get("type") != "snapshot":
            await self.send_error('unknown message: send {"type": "snapshot"}')
            return
        try:
            await self.client_snapshot(data)
        except (psycopg.Error, OSError):
            logger.warning("snapshot request failed", exc_info=True)
            await self.send_error("the job state could not be read; try again")

    async def client_snapshot(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def send_error(self, error: str) -> None:
        await self.send(text_data=json.dumps({"type": "error", "error": error}))


class JobConsumer(_LiveConsumer):
    """``ws/pgbackground/jobs/<id>/``: one job, for its owner, permitted staff or its cookie."""

    async def connect(self) -> None:
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        cookie = parse_cookie((query.get("cookie") or [None])[0])
        try:
            self.listener = get_listener()
            # An id beyond bigint (the route allows 19 digits) is simply no job.
            in_range = self.job_id < (1 << 63)
            snaps = await self.listener.snapshots([self.job_id]) if in_range else []
        except (psycopg.Error, OSError):
            logger.warning("job socket: database unreachable", exc_info=True)
            await self.refuse(CLOSE_UNAVAILABLE)
            return
        snap = snaps[0] if snaps else None
        user = self.scope.get("user")
        if not await database_sync_to_async(may_view)(user, snap, cookie):
            await self.refuse(CLOSE_FORBIDDEN)
            return
        await self.accept()
        try:
            await self.listener.subscribe_job(self.job_id, self)
            self._subscribed = True
            # Read again now that events are heard: nothing falls between snapshot and events.
            self.put_snapshots(await self.listener.snapshots([self.job_id]))
        except (ListenerUnavailableError, psycopg.Error, OSError):
            logger.warning("job socket: cannot listen for events", exc_info=True)
            await self.close(code=CLOSE_UNAVAILABLE)
            self._closed = True
            return
        await self.start_live()

    async def resync(self, since: datetime) -> None:
        if self.listener is not None and not self._closed:
            self.put_snapshots(await self.listener.snapshots([self.job_id]))

    async def client_snapshot(self, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        for snap in await self.listener.snapshots([self.job_id]):
            # An explicit request is answered even when nothing changed.
            self.outbox.sent_seq.pop(snap.id, None)
            self.outbox.put(snap.message)


class FeedConsumer(_LiveConsumer):
    """``ws/pgbackground/jobs/``: state changes and progress of every job the user may see."""

    feed_scope: FeedScope

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Last state sent per job, to know which ones to re-read after a reconnect.
        self.states: dict[int, str] = {}

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_LOGIN_REQUIRED)
            return
        scope = await database_sync_to_async(feed_scope)(user)
        if scope is None:
            await self.refuse(CLOSE_FORBIDDEN)
            return
        self.feed_scope = scope
        await self.accept()
        try:
            self.listener = get_listener()
            await self.listener.subscribe_feed(self)
            self._subscribed = True
            since = datetime.now(UTC) - FEED_RECENT
            self.put_snapshots(await self.listener.feed_snapshots(since, scope.owner_id))
        except (ListenerUnavailableError, psycopg.Error, OSError):
            logger.warning("feed socket: cannot listen for events", exc_info=True)
            await self.close(code=CLOSE_UNAVAILABLE)
            self._closed = True
            return
        await self.start_live()

    async def resync(self, since: datetime) -> None:
        if self.listener is None or self._closed:
            return
        # Jobs this socket last saw unfinished, plus active and recently finished ones.
        unfinished = [j for j, state in self.states.items() if state not in TERMINAL_STATES]
        owner_id = self.feed_scope.owner_id
        snaps = await self.listener.snapshots(unfinished[-MAX_SNAPSHOT_JOBS:], owner_id)
        snaps += await self.listener.feed_snapshots(since, owner_id)
        self.put_snapshots(snaps)

    def deliver(self, message: dict[str, Any]) -> None:
        self._record(message)
        super().deliver(message)

    def put_snapshots(self, snaps: list[Snapshot]) -> None:
        for snap in snaps:
            self._record(snap.message)
        super().put_snapshots(snaps)

    def _record(self, message: dict[str, Any]) -> None:
        self.states[int(message["id"])] = str(message["state"])
        if len(self.states) > FEED_STATES_KEPT:
            self.states = {j: s for j, s in self.states.items() if s not in TERMINAL_STATES}

    async def client_snapshot(self, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 < i < (1 << 63) for i in ids
        ):
            await self.send_error('"ids" must be a list of job ids')
            return
        if len(ids) > MAX_SNAPSHOT_JOBS:
            await self.send_error(f"at most {MAX_SNAPSHOT_JOBS} ids at a time")
            return
        for snap in await self.listener.snapshots(ids, self.feed_scope.owner_id):
            self.outbox.sent_seq.pop(snap.id, None)
            self._record(snap.message)
            self.outbox.put(snap.message)


__all__ = [
    "CLOSE_FORBIDDEN",
    "CLOSE_LOGIN_REQUIRED",
    "CLOSE_UNAVAILABLE",
    "FeedConsumer",
    "JobConsumer",
]
