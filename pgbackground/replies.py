"""Reply channels: how ``wait()`` / ``result()`` learn that a job ended without a LISTEN of their
own.

Each launcher process has one reply connection (per database), which LISTENs, once, to a
channel named after its backend pid. A job launched while it exists records the pid
(``reply_pid``), and the statement that records the job's end also NOTIFYs that channel with the
job id. Waiting for such a job, on any thread of the process, is then a read of that socket: no
LISTEN / UNLISTEN round trip, no state read before the job ends.

One connection per process, not one per thread: PostgreSQL wakes every LISTENing backend of the
database on every notifying commit, so each listening connection costs every job in the
database CPU (with two launching threads, one per thread cost 0.11-0.13 ms a job against
0.035-0.06 for one; docs/performance.md). The threads share it by turns: a waiting thread reads
the socket itself while no other thread does (a lone thread's wait has no hand-off), and notes
what it reads for the others, whom it wakes.

Any session can NOTIFY any channel, so a notification counts as the job's end only if it carries
the job's reply tag (events.reply_tag: a hash of the cookie, which only a statement that read
the job's row knows); ``wait()`` then returns without reading the row. An untagged one (a pool
of an earlier version) is a hint to re-read the row; a wrongly tagged one is ignored. A job
launched before the reply connection existed, or forgotten because too many were outstanding,
is waited for the general way (its own channel). A reply connection that is replaced (broken,
fork, another database) takes its hub with it; jobs that named it fall back the same way
because the new hub does not know them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .events import reply_channel, reply_tag

# Jobs remembered as "will be told"; the oldest are forgotten beyond this (launch-only threads
# would otherwise grow it forever), and fall back to a LISTEN of their own. Notifications of
# jobs not expected (yet: the end can be read by another thread before the launching thread
# registers its job) are kept as many.
MAX_EXPECTED = 10_000
# Launches between two reads of the notifications that arrived meanwhile (else they wait in the
# socket, and a backend that cannot send them stops reading PostgreSQL's notification queue).
DRAIN_EVERY = 256


class ReplyHub:
    """A process's reply connection and what it was told: the jobs expected, those ended."""

    def __init__(self, conn: psycopg.Connection[Any], key: tuple[Any, ...]) -> None:
        self.conn = conn
        self.key = key
        self.pid = conn.info.backend_pid
        self.channel = reply_channel(self.pid)
        self.broken = False
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._reading = False  # a thread reads the socket (without the mutex)
        self._expected: OrderedDict[int, int] = OrderedDict()  # job id -> cookie
        self._ended: set[int] = set()  # announced (proven or not), not yet taken
        self._proven: set[int] = set()
        self._early: OrderedDict[int, str] = OrderedDict()  # job id -> tag, not yet expected
        self._since_drain = 0

    # --- bookkeeping (any thread) --------------------------------------------------------------

    def expect(self, job_id: int, cookie: int) -> None:
        """``job_id`` names this hub's pid: its end will be announced here."""
        with self._mutex:
            self._expected[job_id] = cookie
            while len(self._expected) > MAX_EXPECTED:
                old, _ = self._expected.popitem(last=False)
                self._ended.discard(old)
                self._proven.discard(old)
            early = self._early.pop(job_id, None)
            if early is not None:
                self._take_in(job_id, cookie, early)
            self._since_drain += 1
            drain = self._since_drain >= DRAIN_EVERY and not self._reading
        if drain:
            self.await_end(None, 0.0)

    def expects(self, job_id: int, cookie: int) -> bool:
        """Will the end of this job (this very handle: the cookie matches) be announced here?"""
        with self._mutex:
            return self._expected.get(job_id) == cookie

    def told_ended(self, job_id: int) -> None:
        """The job is known to have ended (a later wait or result need not wait for a hint)."""
        with self._mutex:
            if job_id in self._expected:
                self._ended.add(job_id)

    def forget(self, job_id: int) -> None:
        with self._mutex:
            self._expected.pop(job_id, None)
            self._ended.discard(job_id)
            self._proven.discard(job_id)

    def take_proven(self, job_id: int) -> bool:
        """Was the end of ``job_id`` announced with its reply tag (so the row need not be read)?"""
        with self._mutex:
            if job_id in self._proven:
                self._proven.discard(job_id)
                return True
            return False

    def note(self, notify: psycopg.Notify) -> int | None:
        """Take in one notification: the id of an expected job it announces, else None."""
        with self._mutex:
            return self._note(notify)

    def _note(self, notify: psycopg.Notify) -> int | None:
        if notify.channel != self.channel:
            return None
        head, _sep, tag = notify.payload.partition(":")
        try:
            job_id = int(head)
        except ValueError:
            return None  # forged: payloads of ours start with an id
        cookie = self._expected.get(job_id)
        if cookie is None:
            self._early[job_id] = tag
            while len(self._early) > MAX_EXPECTED:
                self._early.popitem(last=False)
            return None
        return job_id if self._take_in(job_id, cookie, tag) else None

    def _take_in(self, job_id: int, cookie: int, tag: str) -> bool:
        if tag:
            if tag != reply_tag(cookie):
                return False  # forged
            self._proven.add(job_id)
        self._ended.add(job_id)
        return True

    # --- waiting -------------------------------------------------------------------------------

    def await_end(self, job_id: int | None, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the end of ``job_id`` to be announced (then True,
        and the announcement is taken); with ``job_id`` None, only read what arrived. A thread
        reads the connection while no other does; the others sleep until it has read something.
        False at once if the connection broke (its jobs are then waited for the general way)."""
        deadline = time.monotonic() + timeout
        read = False  # read at least once, even with no time to wait
        with self._changed:
            while True:
                if job_id is not None and job_id in self._ended:
                    self._ended.discard(job_id)
                    return True
                remaining = deadline - time.monotonic()
                if self.broken or (remaining <= 0 and (read or self._reading)):
                    return False
                if self._reading:
                    self._changed.wait(remaining)
                    continue
                self._reading = True
                self._since_drain = 0
                self._mutex.release()
                notifies: list[psycopg.Notify] = []
                try:
                    # Never leave the generator in the middle of a batch: psycopg would drop
                    # the rest of it. stop_after=1 ends it after the first batch instead.
                    notifies = list(self.conn.notifies(timeout=max(0.0, remaining), stop_after=1))
                except psycopg.Error:
                    self.broken = True
                finally:
                    self._mutex.acquire()
                    self._reading, read = False, True
                    for notify in notifies:
                        self._note(notify)
                    self._changed.notify_all()
                if job_id is None:
                    return False

    def close(self) -> None:
        self.broken = True
        try:
            self.conn.close()
        except psycopg.Error:
            pass


_hub: ReplyHub | None = None
_hub_lock = threading.Lock()


def current_hub(key: tuple[Any, ...]) -> ReplyHub | None:
    """The process's reply hub for ``key`` (db._launcher_key(): this process and where the
    models database is) if it has a usable one."""
    hub = _hub
    if hub is None or hub.key != key or hub.broken or hub.conn.closed:
        return None
    return hub


def open_hub(key: tuple[Any, ...], connect: Callable[[], psycopg.Connection[Any]]) -> ReplyHub:
    """The process's reply hub for ``key``, opened with ``connect()`` (and LISTENing) if it has
    none; one that is broken, of another process (fork) or of another database is replaced."""
    global _hub
    with _hub_lock:
        hub = current_hub(key)
        if hub is not None:
            return hub
        old, _hub = _hub, None
        if old is not None and old.key[0] == key[0]:
            old.close()  # ours: a broken one, or one of a database the settings left
        conn = connect()
        try:
            hub = ReplyHub(conn, key)
            conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(hub.channel)))
        except BaseException:
            conn.close()
            raise
        _hub = hub
        return hub


def close_hub() -> None:
    """Close the process's reply connection (tests do this before dropping the database)."""
    global _hub
    with _hub_lock:
        hub, _hub = _hub, None
    if hub is not None:
        hub.close()
