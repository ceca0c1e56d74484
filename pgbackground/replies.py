"""Reply channels: how ``wait()`` / ``result()`` learn that a job ended without a LISTEN of their
own.

Each thread's launcher connection LISTENs, once, to a channel named after its backend pid. A job
launched while that connection exists records the pid (``reply_pid``), and the statement that
records the job's end also NOTIFYs that channel with the job id. Waiting for such a job on the
launching thread is then a read of the socket: no LISTEN / UNLISTEN round trip, no state read
before the job ends.

Any session can NOTIFY any channel, so a notification counts as the job's end only if it carries
the job's reply tag (events.reply_tag: a hash of the cookie, which only a statement that read
the job's row knows); ``wait()`` then returns without reading the row. An untagged one (a pool
of an earlier version) is a hint to re-read the row; a wrongly tagged one is ignored. A job
launched before the connection existed, through another connection, or forgotten because too
many were outstanding, is waited for the general way (its own channel). A
connection that is replaced (broken, fork) takes its box with it; jobs that named it fall back
the same way because the new box does not know them.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .events import reply_channel, reply_tag

# Jobs of one connection remembered as "will be told"; the oldest are forgotten beyond this
# (launch-only threads would otherwise grow it forever), and fall back to a LISTEN of their own.
MAX_EXPECTED = 10_000
# Launches between two reads of the hints that arrived meanwhile (they wait in psycopg's
# backlog until the connection is asked for its notifications).
DRAIN_EVERY = 256


class ReplyBox:
    """What one launcher connection was told: the jobs it expects to hear of, and those ended."""

    def __init__(self, backend_pid: int) -> None:
        self.pid = backend_pid
        self.channel = reply_channel(backend_pid)
        self.expected: OrderedDict[int, int] = OrderedDict()  # job id -> cookie
        self.ended: set[int] = set()  # announced (proven or not), not yet taken
        self.proven: set[int] = set()  # announced with the right tag
        self._since_drain = 0

    def expect(self, conn: psycopg.Connection[Any], job_id: int, cookie: int) -> None:
        """``job_id`` names this connection's pid: its end will be announced here."""
        self.expected[job_id] = cookie
        while len(self.expected) > MAX_EXPECTED:
            old, _ = self.expected.popitem(last=False)
            self.ended.discard(old)
            self.proven.discard(old)
        self._since_drain += 1
        if self._since_drain >= DRAIN_EVERY:
            self.drain(conn, 0.0)

    def expects(self, job_id: int, cookie: int) -> bool:
        """Will the end of this job (this very handle: the cookie matches) be announced here?"""
        return self.expected.get(job_id) == cookie

    def note(self, notify: psycopg.Notify) -> int | None:
        """Take in one notification: the id of an expected job it announces, else None."""
        if notify.channel != self.channel:
            return None  # a stale per-job channel
        head, sep, tag = notify.payload.partition(":")
        try:
            job_id = int(head)
        except ValueError:
            return None  # forged: payloads of ours start with an id
        cookie = self.expected.get(job_id)
        if cookie is None:
            return None
        if sep:
            if tag != reply_tag(cookie):
                return None  # forged
            self.proven.add(job_id)
        self.ended.add(job_id)
        return job_id

    def told_ended(self, job_id: int) -> None:
        """The job is known to have ended (a later wait or result need not wait for a hint)."""
        if job_id in self.expected:
            self.ended.add(job_id)

    def forget(self, job_id: int) -> None:
        self.expected.pop(job_id, None)
        self.ended.discard(job_id)
        self.proven.discard(job_id)

    def take_proven(self, job_id: int) -> bool:
        """Was the end of ``job_id`` announced with its reply tag (so the row need not be read)?"""
        if job_id in self.proven:
            self.proven.discard(job_id)
            return True
        return False

    def take_ended(self, job_id: int) -> bool:
        """Was the end of ``job_id`` announced (and not yet taken)?"""
        if job_id in self.ended:
            self.ended.discard(job_id)
            return True
        return False

    def drain(
        self, conn: psycopg.Connection[Any], timeout: float, until: int | None = None
    ) -> bool:
        """Read the notifications that arrived, waiting up to ``timeout`` seconds, or less once
        the end of ``until`` is announced (then True)."""
        self._since_drain = 0
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and self.take_ended(until):
                return True
            # Never leave the generator in the middle of a batch: psycopg would drop the rest
            # of it. stop_after=1 ends it after the first batch instead.
            for notify in conn.notifies(
                timeout=max(0.0, deadline - time.monotonic()), stop_after=1
            ):
                self.note(notify)
            if until is not None and self.take_ended(until):
                return True
            if time.monotonic() >= deadline:
                return False


_boxes: weakref.WeakKeyDictionary[psycopg.Connection[Any], ReplyBox] = (
    weakref.WeakKeyDictionary()
)


def open_box(conn: psycopg.Connection[Any]) -> ReplyBox:
    """LISTEN on ``conn``'s own reply channel (once per connection) and give its box."""
    box = _boxes.get(conn)
    if box is None:
        box = ReplyBox(conn.info.backend_pid)
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(box.channel)))
        _boxes[conn] = box
    return box


def box_of(conn: psycopg.Connection[Any] | None) -> ReplyBox | None:
    """The box of a connection that LISTENs to its reply channel, if it does."""
    return None if conn is None else _boxes.get(conn)
