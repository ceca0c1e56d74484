"""Reading a connection's notifications with libpq directly.

psycopg's ``Connection.notifies()`` generator takes the connection's lock, builds a generator
and a wait for every call; the pool's listener calls it for every job launched (each launch
NOTIFYs the queue channel), which made it a fifth of the pool's Python in a round trip.
:class:`NotificationReader` waits on the socket itself and hands over what libpq read, with
psycopg's own handler mechanism (``add_notify_handler``), so notifications that arrive with
the results of other statements on the connection are kept too.
"""

from __future__ import annotations

import os
import selectors
from collections import deque
from typing import Any

import psycopg
from psycopg import pq


def dispatch_notifies(pgconn: pq.abc.PGconn) -> None:
    """Hand the notifications libpq has read to the connection's handler, as psycopg does after
    each of its own results (its handler feeds ``add_notify_handler`` callbacks, else the
    backlog of ``notifies()``)."""
    while notify := pgconn.notifies():
        if pgconn.notify_handler:
            pgconn.notify_handler(notify)


class NotificationReader:
    """The notifications of one connection, read without psycopg's generator. Once made, the
    connection's notifications all go to it: do not call ``conn.notifies()`` as well.

    It keeps no reference to the connection (each :meth:`read` is given it): a reader kept
    beside a connection in a weak mapping must not keep the connection alive."""

    def __init__(self, conn: psycopg.Connection[Any], *, wakeup_fd: int | None = None) -> None:
        """``wakeup_fd``: a non-blocking file descriptor (a pipe's end) whose data ends a
        :meth:`read` early (the data is read and dropped)."""
        self._received: deque[psycopg.Notify] = deque()
        conn.add_notify_handler(self._received.append)
        self._selector = selectors.DefaultSelector()
        self._selector.register(conn.fileno(), selectors.EVENT_READ, "pg")
        self._wakeup_fd = wakeup_fd
        if wakeup_fd is not None:
            self._selector.register(wakeup_fd, selectors.EVENT_READ, "wakeup")

    def read(self, conn: psycopg.Connection[Any], timeout: float) -> list[psycopg.Notify]:
        """The notifications of ``conn`` (the connection the reader was made for) received so
        far or, if none, within ``timeout`` seconds (a batch: what arrived together with the
        first one), or none if the wake-up descriptor became readable first. OperationalError
        if the connection fails."""
        if not self._received:
            pgconn = conn.pgconn
            with conn.lock:
                dispatch_notifies(pgconn)  # read by libpq along with an earlier result
            ready = (
                {key.data for key, _ in self._selector.select(timeout)}
                if not self._received
                else set()
            )
            if "wakeup" in ready:
                self._drain_wakeup()
            if not self._received and "pg" in ready:
                with conn.lock:
                    pgconn.consume_input()
                    dispatch_notifies(pgconn)
                if pgconn.status == pq.ConnStatus.BAD:  # e.g. terminated by an administrator
                    message = pgconn.error_message.decode("utf-8", "replace").strip()
                    raise psycopg.OperationalError(message or "the connection was lost")
        received = list(self._received)
        self._received.clear()
        return received

    def _drain_wakeup(self) -> None:
        assert self._wakeup_fd is not None
        try:
            while os.read(self._wakeup_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Stop waiting on the connection (the wake-up descriptor stays open: not ours)."""
        self._selector.close()
