"""The ASGI side of the event path: one LISTEN connection per process, fanned out in-process.

Workers publish every state change and progress report on ``pgbackground_events`` (see
:mod:`pgbackground.events`) from the statement that records it. Each ASGI process keeps exactly
one asyncio psycopg connection LISTENing on that channel and hands each event to the websocket
consumers *of this process* that follow the job or a feed.

Events never travel through a channel layer. A ``group_send`` from every ASGI process that
heard the NOTIFY would reach each socket once per process over channels-redis; in-process
dispatch reaches each socket exactly once whatever ``CHANNEL_LAYERS`` says (none, in-memory or
Redis), and N processes each serve their own sockets.

The connection starts with the first subscriber, reconnects with back-off, and after a reconnect
asks every subscriber to re-read its jobs, so a state reached while nobody was listening (a
final state above all) still arrives. It closes after a while without subscribers.

A second, ordinary connection reads snapshots: once per job when this process first sees it or
its state changes (to add timings, error and owner to the event), and for consumers' snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql

from .access import FeedScope
from .db import aconnect, connection_params, models_alias
from .events import EVENTS_CHANNEL
from .pool import Backoff
from .snapshots import TERMINAL_STATES, Snapshot, aby_ids, afeed

logger = logging.getLogger("pgbackground.listener")

# Seconds between checks for idleness/shutdown while waiting for notifications.
TICK = 1.0
# Seconds without traffic after which the LISTEN connection is checked with a query.
KEEPALIVE = 30.0
# Seconds the connections stay open after the last subscriber left.
IDLE_CLOSE = 60.0
# Seconds a new subscriber waits for the LISTEN connection before giving up.
READY_TIMEOUT = 10.0
# Jobs whose owner and last state are remembered (to filter feeds and spot state changes).
KNOWN_JOBS = 10_000
# Margin taken before the moment a connection was lost, for what a resync re-reads.
RESYNC_MARGIN = timedelta(seconds=5)


class Subscriber(Protocol):
    """What a consumer gives the listener."""

    def deliver(self, message: dict[str, Any]) -> None:
        """Take one event (must not block: queue it)."""

    async def resync(self, since: datetime) -> None:
        """Re-read the jobs followed: the listener was disconnected since about ``since``."""


class FeedSubscriber(Subscriber, Protocol):
    feed_scope: FeedScope


class ListenerUnavailableError(Exception):
    """The LISTEN connection could not be established in time (database unreachable)."""


def parse_event(payload: str) -> dict[str, Any] | None:
    """The event of a NOTIFY payload, or None if it is not one (logged, never raised)."""
    try:
        data = json.loads(payload)
        event = {
            "type": "event",
            "id": int(data["id"]),
            "state": str(data["state"]),
            "pct": None if data.get("pct") is None else float(data["pct"]),
            "message": str(data.get("message") or ""),
            "seq": int(data["seq"]),
        }
        event["terminal"] = event["state"] in TERMINAL_STATES
    except (ValueError, TypeError, KeyError):
        logger.warning("ignoring a malformed %s payload: %.200r", EVENTS_CHANNEL, payload)
        return None
    if "owner" in data:  # not sent by the core today; used when it is
        event["_owner"] = None if data["owner"] is None else int(data["owner"])
    if isinstance(data.get("notices_count"), int):  # notices kept so far (a page shows new ones)
        event["notices_count"] = data["notices_count"]
    return event


class EventListener:
    """One per ASGI process (per event loop): the LISTEN connection and its subscribers."""

    def __init__(self, alias: str | None = None) -> None:
        self.alias = alias or models_alias()
        self.loop = asyncio.get_running_loop()
        self._params_key = _params_key(self.alias)
        self._jobs: dict[int, set[Subscriber]] = {}
        self._feeds: set[FeedSubscriber] = set()
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._idle_since: float | None = None
        self._query_conn: psycopg.AsyncConnection[Any] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._query_lock = asyncio.Lock()
        # job id -> (owner id, last state seen)
        self._known: OrderedDict[int, tuple[int | None, str]] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        # Observability (tests, logs).
        self.backend_pid: int | None = None
        self.connects = 0
        self.events_received = 0

    # --- subscriptions --------------------------------------------------------------------------

    async def subscribe_job(self, job_id: int, sub: Subscriber) -> None:
        """Follow one job; returns once the connection is LISTENing (take the snapshot after)."""
        self._jobs.setdefault(int(job_id), set()).add(sub)
        await self._ready(sub)

    async def subscribe_feed(self, sub: FeedSubscriber) -> None:
        """Follow every job ``sub.feed_scope`` allows; returns once LISTENing."""
        self._feeds.add(sub)
        await self._ready(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        self._feeds.discard(sub)
        for job_id in [j for j, subs in self._jobs.items() if sub in subs]:
            subs = self._jobs[job_id]
            subs.discard(sub)
            if not subs:
                del self._jobs[job_id]
        if not self.has_subscribers():
            self._idle_since = self.loop.time()

    def has_subscribers(self) -> bool:
        return bool(self._jobs or self._feeds)

    async def _ready(self, sub: Subscriber) -> None:
        self._idle_since = None
        if self._task is None or self._task.done():
            if self._closing:
                raise ListenerUnavailableError("the event listener is closed")
            self._task = self.loop.create_task(self._run(), name="pgbackground-listener")
        try:
            await asyncio.wait_for(self._listening.wait(), READY_TIMEOUT)
        except TimeoutError:
            self.unsubscribe(sub)
            raise ListenerUnavailableError("could not LISTEN for job events") from None

    # --- snapshots ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def query_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The listener's query connection, one user at a time; a broken one is replaced."""
        async with self._query_lock:
            conn = self._query_conn
            if conn is None or conn.closed or conn.broken:
                conn = await aconnect(self.alias, application_name="pgbackground events (reads)")
                self._query_conn = conn
            try:
                yield conn
            except psycopg.OperationalError:
                self._query_conn = None
                await conn.close()
                raise

    async def snapshots(self, ids: list[int], owner_id: int | None = None) -> list[Snapshot]:
        """Snapshots of jobs ``ids`` (only ``owner_id``'s when given)."""
        async with self.query_connection() as conn:
            found = await aby_ids(conn, ids, owner_id)
        for snap in found:
            self._remember(snap.id, snap.owner_id, str(snap.message["state"]))
        return found

    async def feed_snapshots(self, since: datetime, owner_id: int | None) -> list[Snapshot]:
        """Active jobs and jobs finished since ``since`` (only ``owner_id``'s when given)."""
        async with self.query_connection() as conn:
            return await afeed(conn, since, owner_id)

    def _remember(self, job_id: int, owner_id: int | None, state: str) -> None:
        self._known[job_id] = (owner_id, state)
        self._known.move_to_end(job_id)
        while len(self._known) > KNOWN_JOBS:
            self._known.popitem(last=False)

    # --- the LISTEN connection ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        lost_at: datetime | None = None
        while True:
            # No await between this check and returning: a subscriber arriving later finds the
            # task done and starts a new one.
            if self._closing or (not self.has_subscribers() and self._idle_for() >= IDLE_CLOSE):
                return
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = self._listen_conn = await aconnect(
                    self.alias, application_name="pgbackground events"
                )
                await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(EVENTS_CHANNEL)))
                self.backend_pid = conn.info.backend_pid
                self.connects += 1
                self._listening.set()
                backoff.reset()
                if lost_at is not None:
                    logger.info("event listener reconnected; resyncing subscribers")
                    self._resync_all(lost_at - RESYNC_MARGIN)
                    lost_at = None
                await self._listen(conn)
                continue  # idle or closing: re-checked above
            except (psycopg.Error, OSError) as exc:
                if lost_at is None:
                    lost_at = datetime.now(UTC)
                    logger.warning("event listener connection lost (%s); reconnecting", exc)
            finally:
                self._listening.clear()
                self._listen_conn = None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
            if self._closing:
                return
            await asyncio.sleep(backoff.next())

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last_traffic = self.loop.time()
        while True:
            async for notify in conn.notifies(timeout=TICK):
                last_traffic = self.loop.time()
                if notify.channel == EVENTS_CHANNEL:
                    self.events_received += 1
                    await self._dispatch(notify.payload)
            if self._closing or (not self.has_subscribers() and self._idle_for() >= IDLE_CLOSE):
                return
            if self.loop.time() - last_traffic >= KEEPALIVE:
                await conn.execute("SELECT 1")
                last_traffic = self.loop.time()

    def _idle_for(self) -> float:
        return 0.0 if self._idle_since is None else self.loop.time() - self._idle_since

    async def _dispatch(self, payload: str) -> None:
        event = parse_event(payload)
        if event is None:
            return
        job_id = event["id"]
        job_subs = self._jobs.get(job_id)
        if not job_subs and not self._feeds:
            return
        # NOTIFY is not authenticated (any session, a job's SQL too, may send one): the payload
        # only says which job to look at. What reaches the sockets is read from the job's row,
        # once for all subscribers; an event announcing more than the row holds is dropped.
        try:
            found = await self.snapshots([job_id])
        except (psycopg.Error, OSError) as exc:
            logger.warning("could not read job %s for its event: %s", job_id, exc)
            return
        if not found or found[0].seq < event["seq"]:
            return
        message: dict[str, Any] = {**found[0].message, "type": "event"}
        owner_id = found[0].owner_id
        self._remember(job_id, owner_id, message["state"])
        for sub in list(job_subs or ()):
            _deliver(sub, message)
        for feed in list(self._feeds):
            if feed.feed_scope.allows(owner_id):
                _deliver(feed, message)

    def _resync_all(self, since: datetime) -> None:
        subs: set[Subscriber] = set(self._feeds)
        for job_subs in self._jobs.values():
            subs.update(job_subs)
        for sub in subs:
            task = self.loop.create_task(sub.resync(since))
            self._background.add(task)
            task.add_done_callback(self._resync_done)

    def _resync_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a subscriber's resync failed: %s", task.exception())

    # --- shutdown -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close both connections and stop the task (tests; process shutdown)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for bg in list(self._background):
            bg.cancel()
        if self._query_conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._query_conn.close()
            self._query_conn = None


    def abandon(self) -> None:
        """Drop the connections of a listener whose event loop is gone (no await possible)."""
        self._closing = True
        for conn in (self._listen_conn, self._query_conn):
            if conn is not None and not conn.closed:
                with contextlib.suppress(Exception):
                    conn.pgconn.finish()
        self._listen_conn = self._query_conn = None


def _deliver(sub: Subscriber, message: dict[str, Any]) -> None:
    try:
        sub.deliver(message)
    except Exception:  # a broken consumer must not stop the others
        logger.exception("a subscriber failed to take an event")


def _params_key(alias: str) -> tuple[str, ...]:
    return tuple(sorted(f"{k}={v}" for k, v in connection_params(alias).items()))


_listener: EventListener | None = None
_closing: set[asyncio.Task[None]] = set()


def get_listener() -> EventListener:
    """This process's listener, created on first use in the running event loop.

    A listener belongs to one event loop (daphne has one; a test harness may run several in
    turn) and to one database: a new loop or changed database settings get a new listener.
    """
    global _listener
    loop = asyncio.get_running_loop()
    current = _listener
    if current is not None and (
        current.loop is not loop or current._params_key != _params_key(current.alias)
    ):
        if current.loop is loop:
            _closing.add(task := loop.create_task(current.aclose()))
            task.add_done_callback(_closing.discard)
        elif current.loop.is_closed():
            current.abandon()
        current = None
    if current is None:
        current = _listener = EventListener()
    return current


async def close_listener() -> None:
    """Close this process's listener if it runs in this loop (tests call it before their loop
    ends and before the test database is dropped)."""
    global _listener
    current, _listener = _listener, None
    if current is not None and current.loop is asyncio.get_running_loop():
        await current.aclose()
