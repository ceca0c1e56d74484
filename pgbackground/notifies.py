"""Reading a connection's notifications with libpq directly.

psycopg's ``Connection.notifies()`` generator takes the connection's lock, builds a generator
and a wait for every call; the pool's listener calls it for every job launched (each launch
NOTIFYs the queue channel), which made it a fifth of the pool's Python in a round trip.
:class:`NotificationReader` waits on the socket itself and hands over what libpq read, with
psycopg's own handler mechanism (``add_notify_handler``), so notifications that arrive with
the results of other statements on the connection are kept too.
"""

from __future__ import annotations

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
    connection's notifications all go to it: do not call ``conn.notifies()`` as well."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._received: deque[psycopg.Notify] = deque()
        conn.add_notify_handler(self._received.append)
        self._selector = selectors.DefaultSelector()
        self._selector.register(conn.fileno(), selectors.EVENT_READ)

    def read(self, timeout: float) -> list[psycopg.Notify]:
        """The notifications received so far or, if none, within ``timeout`` seconds (a batch:
        what arrived together with the first one). OperationalError if the connection fails."""
        if not self._received:
            conn, pgconn = self._conn, self._conn.pgconn
            with conn.lock:
                dispatch_notifies(pgconn)  # read by libpq along with an earlier result
            if not self._received and self._selector.select(timeout):
                with conn.lock:
                    pgconn.consume_input()
                    dispatch_notifies(pgconn)
                if pgconn.status == pq.ConnStatus.BAD:  # e.g. terminated by an administrator
                    message = pgconn.error_message.decode("utf-8", "replace").strip()
                    raise psycopg.OperationalError(message or "the connection was lost")
        received = list(self._received)
        self._received.clear()
        return received

    def close(self) -> None:
        self._selector.close()
