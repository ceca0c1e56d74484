"""Helpers of the reliability and security suites (tests/test_faults.py, test_load.py,
test_fuzz.py, test_security.py): measured figures, waiting on many jobs through the pool's
NOTIFY events, side-effect tables.

Figures (bounds, jobs/s, outcome counts, timing medians) are printed at the end of each module
and kept in tests/artifacts/reliability-figures.json (one key per figure, last run wins).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgbackground.events import EVENTS_CHANNEL
from tests.helpers import raw_connection, sql

TERMINAL = frozenset({"stopped", "canceled", "error"})
FIGURES_FILE = Path(__file__).resolve().parent / "artifacts" / "reliability-figures.json"
_figures: list[tuple[str, Any]] = []


def record(name: str, value: Any) -> None:
    """Keep a measured figure (printed at the end of the module, saved to FIGURES_FILE)."""
    _figures.append((name, value))
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES_FILE.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = value
    FIGURES_FILE.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@pytest.fixture(scope="module")
def print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the figures a module recorded, after its tests (visible with -q too)."""
    start = len(_figures)
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for name, value in _figures[start:]:
        reporter.write_line(f"figure  {name} = {json.dumps(value, default=str)}")


def wait_terminal(
    ids: Collection[int], timeout: float = 120.0, *, on_event: Callable[[dict], None] | None = None
) -> dict[int, str]:
    """Block until every job of ``ids`` is terminal (woken by the events the pool publishes;
    the table is re-read when no event came for 5 s); their final states."""
    pending = set(ids)
    with raw_connection() as conn:
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")

        def reread() -> None:
            rows = conn.execute(
                "SELECT id FROM pgbackground_job WHERE id = ANY(%s)"
                " AND state IN ('stopped', 'canceled', 'error')",
                [list(pending)],
            ).fetchall()
            pending.difference_update(r[0] for r in rows)

        reread()
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(pending)} jobs not terminal: {sorted(pending)[:20]}")
            for n in conn.notifies(timeout=min(5.0, remaining)):
                event = json.loads(n.payload)
                if on_event is not None:
                    on_event(event)
                if event["state"] in TERMINAL:
                    pending.discard(event["id"])
                    if not pending:
                        break
            else:
                reread()
    rows = sql("SELECT id, state FROM pgbackground_job WHERE id = ANY(%s)", [list(ids)])
    return dict(rows)


class Events:
    """LISTEN on the event feed; wait for events of several jobs without losing any (unlike
    tests.helpers.EventListener, which waits for one job's event at a time)."""

    def __init__(self) -> None:
        self.conn = raw_connection()
        self.conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        self.seen: list[tuple[float, dict[str, Any]]] = []

    def wait(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> tuple[float, dict[str, Any]]:
        """The first event (seen before or now) matching; (monotonic time it arrived, event)."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.seen:
                if match(item[1]):
                    self.seen.remove(item)
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s")
            # Read whole packets: leaving psycopg's generator early drops the rest of a packet.
            for n in self.conn.notifies(timeout=remaining, stop_after=1):
                self.seen.append((time.monotonic(), json.loads(n.payload)))

    def close(self) -> None:
        self.conn.close()


def counts(values: Collection[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
