"""What the admin's live pages need from the server, with the test client: the hooks in the
HTML (websocket paths, URLs, the indicator), the job page's sections endpoint (what the page
re-fetches when its job changes state), the JSON shared with the websocket messages, and the
notices count carried by progress events. The browser side is tests/browser/test_admin_live.py.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from pgbackground.admin.views import JOB_PAGE_SLOTS
from pgbackground.listener import parse_event
from tests.admin_support import JOBS, job_url, make_job, make_user, make_worker

pytestmark = pytest.mark.django_db(transaction=True)


def client_of(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def root():
    return make_user("root", superuser=True)


def slots_of(html: str) -> list[str]:
    return re.findall(r'<div data-pgb-slot="(\w+)">', html)


def test_pages_carry_the_live_hooks(root):
    job = make_job(root, state="running", progress_pct=10.0)
    c = client_of(root)
    html = c.get(job_url(job.pk)).content.decode()
    assert f'data-pgb-socket="/ws/pgbackground/jobs/{job.pk}/"' in html
    assert f'data-pgb-sections-url="{JOBS}{job.pk}/sections/"' in html
    assert f'data-pgb-state-url="{JOBS}{job.pk}/state/"' in html
    assert 'id="pgb-live-indicator"' in html and "data-pgb-indicator" in html
    for name in JOB_PAGE_SLOTS:
        assert f'id="pgb-slot-{name}"' in html
    assert "pgbackground/live.js" in html and "pgbackground/admin/live.js" in html
    # The running time in the timeline ticks too.
    assert re.search(r'for <span data-pgb-field="duration">[^<]+</span>', html)
    html = c.get(JOBS).content.decode()
    assert 'data-pgb-socket="/ws/pgbackground/jobs/"' in html
    assert 'id="pgb-live-indicator"' in html and 'id="pgb-new-jobs"' in html


def test_sections_render_the_asked_slots_in_page_order(root):
    job = make_job(
        root,
        state="error",
        sql="SELECT 1/0",
        error_sqlstate="22012",
        error_message="division by zero",
        notices=[{"severity": "NOTICE", "message": "before the end"}],
    )
    c = client_of(root)
    r = c.get(job_url(job.pk, "sections/"), {"slots": "notices,error,bogus"})
    assert r.status_code == 200 and "no-store" in r["Cache-Control"]
    html = r.content.decode()
    assert slots_of(html) == ["error", "notices"]
    assert "22012" in html and "division_by_zero" in html
    assert "NOTICE:  before the end" in html
    assert "<html" not in html  # a fragment, not a page
    everything = c.get(job_url(job.pk, "sections/")).content.decode()
    assert slots_of(everything) == list(JOB_PAGE_SLOTS)


def test_sections_buttons_follow_the_state_and_carry_csrf_tokens(root):
    running = make_job(root, state="running")
    c = client_of(root)
    html = c.get(job_url(running.pk, "sections/"), {"slots": "actions"}).content.decode()
    assert 'id="pgb-cancel"' in html and 'data-pgb-enable-when="queued running"' in html
    assert "csrfmiddlewaretoken" in html
    done = make_job(root, state="stopped")
    html = c.get(job_url(done.pk, "sections/"), {"slots": "actions"}).content.decode()
    assert 'id="pgb-cancel"' not in html and 'id="pgb-relaunch"' in html


def test_sections_of_someone_elses_job_are_not_found():
    alice = make_user("alice", "view_job")
    bob = make_user("bob", "view_job")
    job = make_job(bob, state="running")
    assert client_of(alice).get(job_url(job.pk, "sections/")).status_code == 404
    assert client_of(bob).get(job_url(job.pk, "sections/")).status_code == 200
    nobody = make_user("nobody")
    assert client_of(nobody).get(job_url(job.pk, "sections/")).status_code == 403


def test_state_json_has_the_websocket_fields(root):
    worker = make_worker()
    job = make_job(
        root,
        state="error",
        worker=worker,
        error_sqlstate="22012",
        error_message="division by zero",
    )
    data = client_of(root).get(job_url(job.pk, "state/")).json()
    assert data["duration"] == pytest.approx(data["run_seconds"], abs=0.001)
    assert data["error"] == {"sqlstate": "22012", "message": "division by zero"}
    assert data["worker"] == "db1:4242"
    assert data["terminal"] is True


def test_states_json_does_not_grow_queries_with_jobs(root):
    worker = make_worker()
    c = client_of(root)
    ids = [make_job(root, state="running", worker=worker).pk]

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            jobs = c.get(f"{JOBS}states/", {"ids": ",".join(map(str, ids))}).json()["jobs"]
        assert {j["worker"] for j in jobs} == {"db1:4242"}
        return len(ctx.captured_queries)

    one = count()
    ids += [make_job(root, state="running", worker=worker).pk for _ in range(5)]
    assert count() == one


def test_a_completed_jobs_bar_is_full_whatever_it_last_reported(root):
    job = make_job(root, state="stopped", progress_pct=60.0)
    html = client_of(root).get(job_url(job.pk)).content.decode()
    assert 'style="width: 100.0%"' in html and "60%" not in html


def test_progress_events_carry_the_notices_count():
    payload = (
        '{"id": 7, "state": "running", "pct": 50, "message": "m", "seq": 3, "notices_count": 2}'
    )
    event = parse_event(payload)
    assert event is not None and event["notices_count"] == 2
    older = parse_event('{"id": 7, "state": "running", "pct": 50, "message": "m", "seq": 3}')
    assert older is not None and "notices_count" not in older
