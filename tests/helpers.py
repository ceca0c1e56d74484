"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from django.db import connection

from pgbackground.db import connection_params

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02) -> T:
    """Re-check a condition on real state until it holds (fails the test after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run a query on Django's connection (autocommit in transactional tests); its rows."""
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def raw_connection() -> psycopg.Connection[Any]:
    """A separate autocommit connection to the test database."""
    return psycopg.connect(autocommit=True, **connection_params("default"))


class EventListener:
    """LISTEN on pgbackground's event feed: block until an event for a job matches."""

    def __init__(self) -> None:
        self.conn = raw_connection()
        self.conn.execute("LISTEN pgbackground_events")
        self.seen: list[dict[str, Any]] = []  # every event received, in order

    def wait_for(
        self, job_id: int, match: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first event of ``job_id`` that matches, including events received earlier
        while waiting for another job."""
        for event in self.seen:
            if event["id"] == job_id and match(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The whole batch is read: leaving psycopg's generator in the middle of one drops
            # the rest of it (another job's events arriving together).
            found = None
            for n in self.conn.notifies(
                timeout=max(0.0, deadline - time.monotonic()), stop_after=1
            ):
                event = json.loads(n.payload)
                self.seen.append(event)
                if found is None and event["id"] == job_id and match(event):
                    found = event
            if found is not None:
                return found
        raise AssertionError(f"no matching event for job {job_id} within {timeout} s")

    def close(self) -> None:
        self.conn.close()


def wait_for_state(handle: Any, state: str, timeout: float = 30.0) -> None:
    """Block until the job is in ``state``, on its events (LISTEN comes before the first look
    at the row, so a change between the two is not missed).

    Only for states that publish an event: 'running' is published once the job's SQL has run
    for ``executor.RUNNING_EVENT_DELAY`` (the claim publishes none), so wait for it only on a
    job whose SQL runs that long."""
    events = EventListener()
    try:
        if handle.state != state:
            events.wait_for(handle.id, lambda e: e["state"] == state, timeout)
    finally:
        events.close()
