"""The admin's job list and job page, live, in a real browser: Debian's Chromium driven by
Playwright against a real daphne process (the demo's ASGI app: HTTP and websockets) and a real
``runworkers`` pool, on the test database.

Jobs stop where the test wants them by waiting for advisory locks the test holds (one per step),
so each change the page shows happened after the page was loaded: the test releases a lock,
then waits for the DOM to show the next step. A marker variable set in the page after it loaded
proves that the page was never reloaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Page, expect

import pgbackground as pgb
from pgbackground.db import connection_params
from tests.admin_support import make_user
from tests.asgiproc import DaphneProcess
from tests.helpers import wait_for_state

pytestmark = [pytest.mark.browser, pytest.mark.pool, pytest.mark.django_db(transaction=True)]

TIMEOUT = 30_000  # ms a page may take to show a change (a failure, not a pace)
LOCKS = (740_101, 740_102)

# Replaces the browser's WebSocket with one that can never connect (like a proxy that refuses
# upgrades): every attempt is counted, fails, and closes with 1006.
NO_WEBSOCKET = """
window.__wsAttempts = 0;
window.WebSocket = class BlockedWebSocket {
  constructor(url) {
    window.__wsAttempts += 1;
    this.url = url; this.readyState = 0;
    setTimeout(() => {
      this.readyState = 3;
      if (this.onerror) this.onerror(new Event("error"));
      if (this.onclose) this.onclose({code: 1006, reason: "", wasClean: false});
    }, 0);
  }
  send() { throw new Error("websockets are blocked in this test"); }
  close() {}
};
"""

# Set once the page is loaded: a reload or a navigation would lose it.
MARK_DOCUMENT = "() => { window.__sameDocument = 'yes'; }"
SAME_DOCUMENT = "() => window.__sameDocument"


@pytest.fixture
def daphne(transactional_db: None) -> Iterator[DaphneProcess]:
    server = DaphneProcess()
    yield server
    server.stop()


@pytest.fixture
def admin_user() -> Any:
    return make_user("admin", superuser=True)


class Locks:
    """Advisory locks held by the test on a connection of its own; a job waits for each."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(autocommit=True, **connection_params("default"))
        for key in LOCKS:
            self.conn.execute("SELECT pg_advisory_lock(%s)", [key])

    def release(self, key: int) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", [key])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def locks() -> Iterator[Locks]:
    held = Locks()
    yield held
    held.close()


def stepped_sql(end: str = "SELECT 42 AS answer") -> str:
    """A job that reports 30 %, waits for the first lock, reports 60 % and a notice, waits for
    the second lock, then runs ``end``. ``pg_advisory_xact_lock``: released when the job ends."""
    return (
        "SELECT pgbackground_progress(30, 'waiting for step 2');\n"
        f"SELECT pg_advisory_xact_lock({LOCKS[0]});\n"
        "DO $$ BEGIN RAISE NOTICE 'step 2 reached'; END $$;\n"
        "SELECT pgbackground_progress(60, 'waiting for step 3');\n"
        f"SELECT pg_advisory_xact_lock({LOCKS[1]});\n"
        f"{end}"
    )


def login(page: Page, base: str, next_url: str) -> None:
    page.goto(f"{base}/admin/login/?next={next_url}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    expect(page.locator("#pgb-tabs")).to_be_visible()


def row_of(page: Page, job_id: int) -> Any:
    return page.locator("#result_list tbody tr").filter(
        has=page.locator(f'[data-pgb-field="state"][data-pgb-job="{job_id}"]')
    )


def indicator(page: Page) -> Any:
    return page.locator("#pgb-live-indicator")


def wait_running(h: pgb.Handle) -> None:
    """The job started, on its events (wait() has no 'running')."""
    wait_for_state(h, "running")


# --- over the websocket ---------------------------------------------------------------------


def test_job_list_follows_a_job_live(
    start_pool: Callable[..., Any],
    daphne: DaphneProcess,
    admin_user: Any,
    locks: Locks,
    page: Page,
    shot: Callable[..., Any],
) -> None:
    base = daphne.http_url
    # No pool yet: the job is queued when the list is rendered.
    h = pgb.launch(stepped_sql(), label="live on the list", owner=admin_user)
    login(page, base, "/admin/pgbackground/job/")
    page.evaluate(MARK_DOCUMENT)
    row = row_of(page, h.id)
    expect(row.locator(".pgb-badge")).to_have_class(re_state("queued"))
    expect(indicator(page)).to_have_text("live", timeout=TIMEOUT)

    start_pool("--concurrency", "2")
    # queued -> running, then its progress: pushed while the page stays as it was.
    expect(row.locator(".pgb-badge")).to_have_class(re_state("running"), timeout=TIMEOUT)
    expect(row.locator(".pgb-progress-text")).to_have_text("30%", timeout=TIMEOUT)
    expect(row.locator('[data-pgb-field="started"]')).not_to_be_empty()
    expect(row.locator('[data-pgb-field="worker"]')).to_contain_text(":", timeout=TIMEOUT)
    run_time = row.locator('[data-pgb-field="duration"]')
    first = run_time.inner_text()
    expect(run_time).not_to_have_text(first, timeout=TIMEOUT)  # ticks while it runs
    locks.release(LOCKS[0])
    expect(row.locator(".pgb-progress-text")).to_have_text("60%", timeout=TIMEOUT)
    expect(row.locator(".pgb-progress-fill")).to_have_attribute(
        "style", re.compile(r"width: 60(\.0)?%")
    )
    shot(page, "live-list-running")

    # A job launched now is announced; the list does not rearrange itself.
    newer = pgb.launch("SELECT 2", label="launched later", owner=admin_user)
    expect(page.locator("#pgb-new-jobs")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#pgb-new-jobs-text")).to_have_text("1 new job")
    assert newer.wait(30)

    locks.release(LOCKS[1])
    assert h.wait(30)
    expect(row.locator(".pgb-badge")).to_have_class(re_state("stopped"), timeout=TIMEOUT)
    expect(row.locator(".pgb-badge")).to_have_text("stopped")
    expect(row.locator(".pgb-progress-text")).to_have_text("100%")
    expect(row.locator('[data-pgb-field="rows"]')).to_have_text("1")
    expect(row.locator('[data-pgb-field="finished"]')).not_to_be_empty()
    expect(row.locator("td.field-command_tag")).to_have_text("SELECT 1", timeout=TIMEOUT)
    expect(indicator(page)).to_have_text("live")
    assert page.evaluate(SAME_DOCUMENT) == "yes", "the list was reloaded"
    shot(page, "live-list-finished")


def test_job_page_follows_its_job_to_an_error_live(
    pool: Any,
    daphne: DaphneProcess,
    admin_user: Any,
    locks: Locks,
    page: Page,
    shot: Callable[..., Any],
) -> None:
    base = daphne.http_url
    end = "SELECT relname,\n       nonexistent_col FROM pg_class"
    h = pgb.launch(stepped_sql(end), label="fails live", owner=admin_user)
    wait_running(h)
    login(page, base, f"/admin/pgbackground/job/{h.id}/change/")
    page.evaluate(MARK_DOCUMENT)
    title_badge = page.locator("h1 .pgb-badge")
    bar = page.locator("#pgb-summary .pgb-progress-text")
    expect(indicator(page)).to_have_text("live", timeout=TIMEOUT)
    expect(indicator(page)).to_have_attribute("data-mode", "live")
    expect(title_badge).to_have_text("running")
    expect(bar).to_have_text("30%", timeout=TIMEOUT)
    expect(page.locator("#pgb-cancel")).to_be_enabled()
    expect(page.locator("#pgb-error")).to_have_count(0)
    expect(page.locator("#pgb-notices .pgb-empty")).to_be_visible()

    # Progress and a notice, pushed while the job still runs.
    locks.release(LOCKS[0])
    expect(bar).to_have_text("60%", timeout=TIMEOUT)
    expect(page.locator("#pgb-summary [data-pgb-field=message]")).to_have_text("waiting for step 3")
    expect(page.locator("#pgb-notices-text")).to_contain_text(
        "NOTICE:  step 2 reached", timeout=TIMEOUT
    )
    expect(page.locator("#pgb-notices-count")).to_have_text("1")
    assert h.state == "running"
    shot(page, "live-job-running")

    # The error block appears, with what only the server knows (the SQLSTATE's name, the
    # error's place in the SQL); the cancel buttons go, "launch again" stays.
    locks.release(LOCKS[1])
    assert h.wait(30)
    expect(title_badge).to_have_text("error", timeout=TIMEOUT)
    expect(page.locator("#pgb-sqlstate")).to_contain_text("42703 undefined_column", timeout=TIMEOUT)
    expect(page.locator("#pgb-error")).to_contain_text('column "nonexistent_col" does not exist')
    expect(page.locator("#pgb-error-position")).to_have_text("nonexistent_col")  # in the SQL
    expect(page.locator("#pgb-cancel")).to_have_count(0)
    expect(page.locator("#pgb-relaunch")).to_be_enabled()
    expect(page.locator("#pgb-timeline .pgb-step-error")).to_be_visible()
    expect(page.locator("#pgb-activity")).to_have_count(0)
    assert page.evaluate(SAME_DOCUMENT) == "yes", "the job page was reloaded"
    # Nothing more can happen to this job: the page stopped following it.
    expect(indicator(page)).to_be_hidden()
    shot(page, "live-job-error")


def test_job_page_shows_the_result_and_disables_cancel_when_done(
    pool: Any,
    daphne: DaphneProcess,
    admin_user: Any,
    locks: Locks,
    page: Page,
    shot: Callable[..., Any],
) -> None:
    base = daphne.http_url
    sql = stepped_sql("SELECT g AS n, md5(g::text) AS hash FROM generate_series(1, 12) g")
    h = pgb.launch(sql, label="result live", owner=admin_user)
    wait_running(h)
    login(page, base, f"/admin/pgbackground/job/{h.id}/change/")
    page.evaluate(MARK_DOCUMENT)
    expect(indicator(page)).to_have_text("live", timeout=TIMEOUT)
    page.evaluate(
        """() => {
          window.__cancelStates = [];
          const b = document.getElementById('pgb-cancel');
          new MutationObserver(() => window.__cancelStates.push(b.disabled))
            .observe(b, {attributes: true, attributeFilter: ['disabled']});
        }"""
    )
    locks.release(LOCKS[0])
    locks.release(LOCKS[1])
    assert h.wait(30)
    expect(page.locator("h1 .pgb-badge")).to_have_text("stopped", timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table tbody tr")).to_have_count(12, timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table thead")).to_contain_text("integer")
    expect(page.locator("#pgb-csv")).to_be_visible()
    expect(page.locator("#pgb-summary .pgb-progress-text")).to_have_text("100%")
    # The cancel button was disabled by the final message before the new buttons replaced it.
    assert page.evaluate("window.__cancelStates") == [True]
    expect(page.locator("#pgb-cancel")).to_have_count(0)
    assert page.evaluate(SAME_DOCUMENT) == "yes"
    shot(page, "live-job-result")


# --- without websockets -----------------------------------------------------------------------


def test_polling_fallback_when_websockets_are_unavailable(
    pool: Any,
    daphne: DaphneProcess,
    admin_user: Any,
    locks: Locks,
    context: Any,
    shot: Callable[..., Any],
) -> None:
    context.add_init_script(NO_WEBSOCKET)
    page = context.new_page()
    base = daphne.http_url
    h = pgb.launch(stepped_sql(), label="polled", owner=admin_user)
    wait_running(h)

    # The list.
    login(page, base, "/admin/pgbackground/job/")
    page.evaluate(MARK_DOCUMENT)
    row = row_of(page, h.id)
    expect(indicator(page)).to_have_text("polling", timeout=TIMEOUT)
    expect(indicator(page)).to_have_attribute("data-mode", "polling")
    expect(row.locator(".pgb-progress-text")).to_have_text("30%", timeout=TIMEOUT)
    locks.release(LOCKS[0])
    expect(row.locator(".pgb-progress-text")).to_have_text("60%", timeout=TIMEOUT)
    assert page.evaluate("window.__wsAttempts") >= 1
    assert page.evaluate(SAME_DOCUMENT) == "yes"
    shot(page, "live-list-polling")

    # When the JSON cannot be reached either, the indicator says so; then polling resumes.
    def states_url(url: str) -> bool:
        return "/admin/pgbackground/job/states/" in url

    page.route(states_url, lambda route: route.abort())
    expect(indicator(page)).to_have_text("offline", timeout=TIMEOUT)
    shot(page, "live-list-offline")
    page.unroute(states_url)
    expect(indicator(page)).to_have_text("polling", timeout=TIMEOUT)

    # The job page: progress, notices, then the result, by polling <id>/state/.
    page.goto(f"{base}/admin/pgbackground/job/{h.id}/change/")
    page.evaluate(MARK_DOCUMENT)
    expect(indicator(page)).to_have_text("polling", timeout=TIMEOUT)
    expect(page.locator("#pgb-summary .pgb-progress-text")).to_have_text("60%", timeout=TIMEOUT)
    expect(page.locator("#pgb-notices-text")).to_contain_text("step 2 reached")
    locks.release(LOCKS[1])
    assert h.wait(30)
    expect(page.locator("h1 .pgb-badge")).to_have_text("stopped", timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table tbody tr")).to_have_count(1, timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table")).to_contain_text("42")
    assert page.evaluate(SAME_DOCUMENT) == "yes"
    shot(page, "live-job-polling-finished")


def re_state(state: str) -> re.Pattern[str]:
    return re.compile(rf"\bpgb-state-{state}\b")
