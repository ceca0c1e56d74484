"""End to end: a real ``runworkers`` pool, real daphne processes serving the demo's ASGI app, real
websocket clients (the ``websockets`` package) and a real browser (Playwright driving Debian's
chromium) on the demo's report page.

Jobs that must be caught mid-run block on an advisory lock the test holds, so the test knows the
job cannot have finished when an event arrives — no sleeps, no timing assumptions.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from websockets.sync.client import ClientConnection, connect

import pgbackground as pgb
from pgbackground.db import connection_params
from tests.asgiproc import DaphneProcess
from tests.helpers import wait_for_state

pytestmark = [pytest.mark.pool, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
LOCK_KEY = 740_001
RECV_TIMEOUT = 30.0  # seconds one message may take before the test fails (not a pace)


@pytest.fixture
def start_daphne(transactional_db: None) -> Iterator[Callable[..., DaphneProcess]]:
    started: list[DaphneProcess] = []

    def start(env: dict[str, str] | None = None) -> DaphneProcess:
        d = DaphneProcess(env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def daphne(start_daphne: Callable[..., DaphneProcess]) -> DaphneProcess:
    return start_daphne()


@contextmanager
def advisory_lock(key: int = LOCK_KEY) -> Iterator[psycopg.Connection[Any]]:
    """Hold a session advisory lock on a connection of our own (released on exit)."""
    conn = psycopg.connect(autocommit=True, **connection_params("default"))
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", [key])
        yield conn
    finally:
        conn.close()


def open_ws(server: DaphneProcess, path: str, cookie_header: str | None = None
            ) -> ClientConnection:
    headers = {"Cookie": cookie_header} if cookie_header else None
    return connect(server.ws_url + path, origin=f"http://127.0.0.1:{server.port}",  # type: ignore[arg-type]
                   additional_headers=headers, proxy=None, open_timeout=RECV_TIMEOUT)


def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=RECV_TIMEOUT))


def recv_until(ws: ClientConnection, done: Callable[[dict[str, Any]], bool]
               ) -> list[dict[str, Any]]:
    got = []
    while True:
        msg = recv(ws)
        got.append(msg)
        if done(msg):
            return got


def job_path(h: pgb.Handle) -> str:
    return f"/ws/pgbackground/jobs/{h.id}/?cookie={h.cookie}"


def wait_state(h: pgb.Handle, state: str, timeout: float = 30.0) -> None:
    """Wait for a job state, on the job's events."""
    wait_for_state(h, state, timeout)


# --- websocket clients ----------------------------------------------------------------------------


def test_progress_events_arrive_while_the_job_still_runs(pool, daphne):
    sql = (
        "SELECT pgbackground_progress(10, 'started');"
        f"SELECT pgbackground_progress(50, 'halfway'), pg_advisory_lock({LOCK_KEY});"
        "SELECT pgbackground_progress(90, 'almost'); SELECT 42 AS answer"
    )
    with ExitStack() as stack:
        lock = stack.enter_context(advisory_lock())
        h = pgb.launch(sql, label="e2e progress")
        ws = stack.enter_context(open_ws(daphne, job_path(h)))
        snap = recv(ws)
        assert snap["type"] == "snapshot" and snap["id"] == h.id
        # The job is stuck on our lock after reporting 50%: this event can only come mid-run.
        got = [snap] if snap["pct"] == 50 else recv_until(ws, lambda m: m["pct"] == 50)
        assert got[-1]["state"] == "running" and got[-1]["message"] == "halfway"
        assert h.state == "running"
        lock.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        rest = recv_until(ws, lambda m: m["state"] == "stopped")
    seqs = [m["seq"] for m in [*got, *rest]]
    assert seqs == sorted(set(seqs)), "duplicate or out-of-order events"
    # The 90 % report comes just before the end: events are built from the job row, so a client
    # sees it as a running event or, when the outcome was recorded first, in the final one.
    assert [m["pct"] for m in rest] == sorted(m["pct"] for m in rest)
    assert (rest[-1]["pct"], rest[-1]["message"]) == (90, "almost")
    assert rest[-1]["finished_at"] and rest[-1]["error"] is None
    assert h.result().rows == [(42,)]


def test_two_daphne_processes_each_deliver_each_event_once(pool, start_daphne):
    servers = [start_daphne(), start_daphne()]
    steps = 5
    sql = (
        f"SELECT pg_advisory_lock({LOCK_KEY});"
        f"SELECT pgbackground_progress(i * 100.0 / {steps}, 'step ' || i), pg_sleep(0.15)"
        f" FROM generate_series(1, {steps}) AS i"
    )
    with ExitStack() as stack:
        lock = stack.enter_context(advisory_lock())
        h = pgb.launch(sql, label="e2e two servers")
        wait_state(h, "running")
        sockets = [stack.enter_context(open_ws(s, job_path(h))) for s in servers for _ in range(2)]
        snaps = [recv(ws) for ws in sockets]
        assert {s["seq"] for s in snaps} == {snaps[0]["seq"]}
        # One LISTEN connection per daphne process, however many sockets it serves.
        listeners = lock.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbackground events'"
            " AND datname = current_database()"
        ).fetchone()
        assert listeners == (2,)
        lock.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        received = [recv_until(ws, lambda m: m["state"] == "stopped") for ws in sockets]
    final_seq = received[0][-1]["seq"]
    for got in received:
        seqs = [m["seq"] for m in got]
        assert seqs == sorted(set(seqs)), f"an event arrived twice or out of order: {seqs}"
        assert seqs[-1] == final_seq
        assert [m["message"] for m in got if m["message"].startswith("step")][-1] == f"step {steps}"


def test_latency_from_progress_call_to_websocket_client(pool, daphne, capsys):
    """Median time from pgbackground_progress() in the job to the event in a websocket client
    (the job sends clock_timestamp(); the database and the client share this machine's clock)."""
    reports = 40
    sql = (
        f"SELECT pg_advisory_lock({LOCK_KEY});"
        f"SELECT pgbackground_progress(i * 100.0 / {reports},"
        " extract(epoch FROM clock_timestamp())::text), pg_sleep(0.12)"
        f" FROM generate_series(1, {reports}) AS i"
    )
    latencies = []
    with ExitStack() as stack:
        lock = stack.enter_context(advisory_lock())
        h = pgb.launch(sql, label="e2e latency")
        wait_state(h, "running")
        ws = stack.enter_context(open_ws(daphne, job_path(h)))
        recv(ws)
        lock.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        while True:
            msg = recv(ws)
            now = time.time()
            if msg["state"] != "running":
                break
            try:
                sent = float(msg["message"])
            except ValueError:
                continue
            latencies.append((now - sent) * 1000)
    assert len(latencies) >= reports // 2
    with capsys.disabled():
        print(
            f"\n[latency] progress() -> websocket client over {len(latencies)} events: "
            f"median {statistics.median(latencies):.1f} ms, "
            f"p90 {statistics.quantiles(latencies, n=10)[-1]:.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )


# --- the demo page in a browser -----------------------------------------------------------------

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def demo_user(transactional_db: None) -> tuple[str, str]:
    call_command("seed_demo", rows=20_000, stdout=open(os.devnull, "w"))  # noqa: SIM115
    User.objects.create_user("carol", password="demo-pass")
    return "carol", "demo-pass"


def off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` in another thread: Playwright's sync API keeps an event loop in this one,
    where Django refuses database calls."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(fn, *args, **kwargs).result()


@pytest.fixture
def browser_page(demo_user: tuple[str, str]) -> Iterator[Any]:
    """A chromium page (Debian's build); the database is prepared before Playwright starts."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium"
                    " (apt-get install -y chromium; scripts/test.sh installs it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def login(page: Any, server: DaphneProcess, user: tuple[str, str]) -> None:
    page.goto(server.http_url + "/")
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    page.wait_for_selector("#run-report")


RECORD_BAR = """() => {
  window.__sameDocument = true;
  window.__widths = [];
  const bar = document.getElementById('report-bar');
  new MutationObserver(() => window.__widths.push(bar.style.width))
    .observe(bar, {attributes: true, attributeFilter: ['style']});
}"""


def test_demo_page_from_launch_to_result(pool, daphne, demo_user, browser_page):
    page = browser_page
    login(page, daphne, demo_user)
    page.check("input[value=regions]")
    page.click("#run-report")
    page.wait_for_url("**/reports/job/")
    page.evaluate(RECORD_BAR)
    page.wait_for_function(
        "document.getElementById('live-indicator').dataset.mode === 'live'"
    )
    # The bar moves, then the result table replaces the wait — all without a reload.
    page.wait_for_selector("#report-result", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    widths = [float(w.rstrip("%")) for w in page.evaluate("window.__widths") if w]
    assert len({w for w in widths if 0 < w < 100}) >= 2, widths
    assert widths == sorted(widths) and widths[-1] == 100
    assert page.inner_text("#report-state") == "stopped"
    rows = page.locator("#report-result tbody tr")
    assert rows.count() == 8
    assert rows.nth(0).locator("td").nth(0).inner_text() == "Andes"
    assert page.is_disabled("#cancel-report")
    # A later visit shows the collected result again (kept in the session).
    page.reload()
    page.wait_for_selector("#report-result")


def test_demo_page_cancel(pool, daphne, demo_user, browser_page):
    page = browser_page
    login(page, daphne, demo_user)
    page.check("input[value=regions]")
    page.click("#run-report")
    page.wait_for_url("**/reports/job/")
    page.wait_for_function("parseFloat(document.getElementById('report-bar').style.width) > 0")
    page.click("#cancel-report")
    page.wait_for_function("document.getElementById('report-state').textContent === 'canceled'")
    assert page.is_disabled("#cancel-report")
    assert "57014" in page.inner_text("[data-pgb-field=error]")
    assert page.locator("#report-result").count() == 0


def test_demo_page_falls_back_to_polling_without_websocket(pool, daphne, demo_user, browser_page):
    page = browser_page
    # The browser cannot open any websocket (as behind a proxy that refuses upgrades).
    page.route_web_socket("**/*", lambda ws: ws.close(code=1011))
    login(page, daphne, demo_user)
    page.check("input[value=months]")
    page.click("#run-report")
    page.wait_for_url("**/reports/job/")
    page.wait_for_function(
        "document.getElementById('live-indicator').dataset.mode === 'polling'"
    )
    page.wait_for_selector("#report-result", timeout=60_000)
    assert page.locator("#report-result tbody tr").count() == 12
    assert page.inner_text("#live-indicator") == "polling"


def test_browser_latency_from_progress_call_to_page(pool, daphne, demo_user, browser_page,
                                                    capsys):
    """The same measurement as above, to a page's live.js in chromium."""
    reports = 40
    sql = (
        f"SELECT pg_advisory_lock({LOCK_KEY});"
        f"SELECT pgbackground_progress(i * 100.0 / {reports},"
        " extract(epoch FROM clock_timestamp())::text), pg_sleep(0.12)"
        f" FROM generate_series(1, {reports}) AS i"
    )
    page = browser_page
    login(page, daphne, demo_user)
    with advisory_lock() as lock:
        h = off_loop(pgb.launch, sql, label="browser latency")
        off_loop(wait_state, h, "running")
        page.add_script_tag(url="/static/pgbackground/live.js")
        page.evaluate(
            """path => new Promise(resolve => {
                window.__lat = []; window.__done = false;
                PgbLive.connect({ws: path, onMode: m => { if (m === 'live') resolve(); },
                  onMessage: (job, raw) => {
                    const sent = parseFloat(raw.message);
                    if (raw.type === 'event' && raw.state === 'running' && !isNaN(sent))
                      window.__lat.push(Date.now() - sent * 1000);
                    if (job.state !== 'running' && job.state !== 'queued') window.__done = true;
                  }});
            })""",
            job_path(h),
        )
        lock.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    page.wait_for_function("window.__done === true", timeout=60_000)
    latencies = page.evaluate("window.__lat")
    assert len(latencies) >= reports // 2
    with capsys.disabled():
        print(
            f"\n[latency] progress() -> chromium page over {len(latencies)} events: "
            f"median {statistics.median(latencies):.1f} ms, "
            f"p90 {statistics.quantiles(latencies, n=10)[-1]:.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )

