"""The admin in a real browser: log in, launch from the form and watch the job finish, cancel
a long job from its page, open a failed job's details; every screen is photographed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

import pgbackground as pgb
from pgbackground.models import Job
from tests.admin_support import make_user

pytestmark = [pytest.mark.browser, pytest.mark.pool]

TIMEOUT = 30_000


@pytest.fixture
def admin_user():
    return make_user("admin", superuser=True)


def login(page: Page, base: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/pgbackground/job/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    expect(page.locator("#pgb-tabs")).to_be_visible()


def launch_from_form(page: Page, base: str, sql: str, label: str) -> int:
    page.goto(f"{base}/admin/pgbackground/job/add/")
    page.fill("#id_sql", sql)
    page.fill("#id_label", label)
    page.click("#pgb-launch")
    expect(page.locator("#pgb-job")).to_be_visible()
    return int(page.locator("#pgb-job").get_attribute("data-pgb-job-id") or 0)


def test_launch_from_the_form_and_watch_it_finish(
    live_server, pool, admin_user, page, shot, browser: Browser
):
    base = live_server.url
    login(page, base)
    page.goto(f"{base}/admin/pgbackground/job/add/")
    page.click("#pgb-launch")  # empty form: inline errors
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-sql .errorlist")).to_contain_text("required")
    page.fill("#id_gucs", "work_mem 64MB")
    page.click("#pgb-launch")
    expect(page.locator(".field-gucs .errorlist")).to_contain_text("name = value")
    shot(page, "launch-form-errors")

    page.goto(f"{base}/admin/pgbackground/job/add/")
    page.fill("#id_sql", "SELECT g AS n, md5(g::text) AS hash FROM generate_series(1, 40) g")
    page.fill("#id_label", "browser report")
    page.fill("#id_gucs", "work_mem = 64MB")
    shot(page, "launch-form")
    page.click("#pgb-launch")
    job_id = int(page.locator("#pgb-job").get_attribute("data-pgb-job-id") or 0)
    # The page follows the job live and shows its result once it finished (no reload).
    expect(page.locator("h1 .pgb-state-stopped")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table tbody tr")).to_have_count(40, timeout=TIMEOUT)
    expect(page.locator("#pgb-result-table thead")).to_contain_text("integer")
    expect(page.locator("#pgb-gucs")).to_contain_text("64MB")
    shot(page, "job-finished")
    with page.expect_download() as dl:
        page.click("#pgb-csv")
    assert dl.value.suggested_filename == f"pgbackground-job-{job_id}.csv"

    # A few more jobs so that the list and the stats have something to show.
    h = pgb.launch("VACUUM (VERBOSE) pg_class", label="vacuum verbose", owner=admin_user)
    pgb.launch("SELECT 1/0", label="fails", owner=admin_user).wait(30)
    pgb.launch(
        "SELECT pgbackground_progress(40, 'crunching'); SELECT pg_sleep(30)",
        label="in progress",
        owner=admin_user,
    )
    h.wait(30)
    page.goto(f"{base}/admin/pgbackground/job/{h.id}/change/")
    expect(page.locator("#pgb-notices-text")).to_contain_text("INFO:  vacuuming")
    shot(page, "job-notices")
    page.goto(f"{base}/admin/pgbackground/job/")
    expect(page.locator("#result_list .pgb-state-running")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#result_list")).to_contain_text("40%", timeout=TIMEOUT)
    shot(page, "job-list")
    page.goto(f"{base}/admin/pgbackground/worker/")
    expect(page.locator("#result_list")).to_contain_text("alive")
    shot(page, "workers")
    page.goto(f"{base}/admin/pgbackground/job/stats/")
    expect(page.locator("svg.pgb-chart")).to_have_count(2)
    shot(page, "stats")

    dark = browser.new_context(color_scheme="dark", viewport={"width": 1680, "height": 900})
    dark.add_init_script("window.localStorage.setItem('django.admin.navSidebarIsOpen', 'false');")
    dpage = dark.new_page()
    login(dpage, base)
    shot(dpage, "job-list-dark")
    dpage.goto(f"{base}/admin/pgbackground/job/{job_id}/change/")
    shot(dpage, "job-finished-dark")
    dpage.goto(f"{base}/admin/pgbackground/job/stats/")
    shot(dpage, "stats-dark")
    dark.close()
    pgb.cancel_all()


def test_cancel_a_long_job_from_its_page(live_server, pool, admin_user, page, shot):
    base = live_server.url
    login(page, base)
    job_id = launch_from_form(
        page,
        base,
        "SELECT pgbackground_progress(25, 'sleeping a long time');\nSELECT pg_sleep(300)",
        "long sleeper",
    )
    # The badge turns to running without a reload.
    expect(page.locator("h1 .pgb-state-running")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#pgb-summary .pgb-progress-text")).to_have_text("25%", timeout=TIMEOUT)
    page.reload()
    expect(page.locator("#pgb-activity")).to_contain_text("PgSleep")
    shot(page, "job-running")
    page.on("dialog", lambda d: d.accept())
    page.click("#pgb-cancel")
    expect(page.locator("h1 .pgb-state-canceled, h1 .pgb-state-error")).to_be_visible(
        timeout=TIMEOUT
    )
    expect(page.locator("#pgb-sqlstate")).to_contain_text("57014 query_canceled")
    shot(page, "job-canceled")
    assert Job.objects.get(pk=job_id).error_sqlstate == "57014"


def test_open_an_error_jobs_details(live_server, pool, admin_user, page, shot):
    base = live_server.url
    h = pgb.launch(
        "SELECT 1;\nSELECT nonexistent_col\n  FROM pg_class", label="typo", owner=admin_user
    )
    assert h.wait(30)
    login(page, base)
    page.fill("#searchbar", "42703")
    page.press("#searchbar", "Enter")
    row = page.locator("#result_list tbody tr", has_text="typo")
    expect(row.locator(".pgb-state-error")).to_be_visible()
    row.locator("th a, td a").first.click()
    expect(page.locator("#pgb-error")).to_contain_text('column "nonexistent_col" does not exist')
    expect(page.locator("#pgb-sqlstate")).to_contain_text("42703 undefined_column")
    expect(page.locator("#pgb-error-position")).to_have_text("nonexistent_col")
    shot(page, "job-error")


@pytest.mark.django_db(transaction=True)
def test_banner_when_no_worker_is_alive(live_server, admin_user, page, shot):
    pgb.launch("SELECT 1", label="waits forever", owner=admin_user)
    login(page, live_server.url)
    expect(page.locator("#pgb-no-worker-banner")).to_contain_text("No live worker")
    shot(page, "job-list-no-worker")
