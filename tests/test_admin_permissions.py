"""Who sees what in the admin: no access by default, own jobs only with view_job, nobody ever
reaches another user's job through any admin URL (IDOR), POST + CSRF for actions."""

from __future__ import annotations

import pytest
from django.test import Client

from pgbackground.models import Job
from tests.admin_support import ADD, JOBS, STATS, WORKERS, job_url, make_job, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def login(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def two_owners():
    alice = make_user("alice", "view_job", "launch_job")
    bob = make_user("bob", "view_job", "launch_job")
    a_job = make_job(
        alice,
        state="stopped",
        sql="SELECT 'alice secret'",
        label="alice-job",
        result_columns=[["x", "integer", 23]],
        result_rows=0,
    )
    b_job = make_job(bob, state="queued", sql="SELECT 'bob secret'", label="bob-job")
    b_done = make_job(
        bob,
        state="error",
        sql="SELECT 'bob failed'",
        error_sqlstate="22012",
        error_message="division by zero",
    )
    return alice, bob, a_job, b_job, b_done


def test_anonymous_is_sent_to_login():
    job = make_job()
    for url in (JOBS, ADD, WORKERS, STATS, job_url(job.pk), job_url(job.pk, "state/")):
        r = Client().get(url)
        assert r.status_code == 302
        assert "/admin/login/" in r["Location"]


def test_staff_without_permissions_gets_403_everywhere_and_no_app_in_index():
    nobody = make_user("nobody")
    job = make_job(nobody)
    c = login(nobody)
    for url in (
        JOBS,
        ADD,
        WORKERS,
        STATS,
        job_url(job.pk),
        job_url(job.pk, "state/"),
        job_url(job.pk, "csv/"),
        f"{JOBS}states/?ids={job.pk}",
    ):
        assert c.get(url).status_code == 403, url
    for url in (
        job_url(job.pk, "cancel/"),
        job_url(job.pk, "detach/"),
        job_url(job.pk, "relaunch/"),
        ADD,
    ):
        assert c.post(url, {"sql": "SELECT 1"}).status_code == 403, url
    index = c.get("/admin/")
    assert index.status_code == 200
    assert not [a for a in index.context["app_list"] if a["app_label"] == "pgbackground"]
    assert Job.objects.count() == 1


def test_launch_only_user_sees_the_form_but_no_list():
    launcher = make_user("launcher", "launch_job")
    c = login(launcher)
    assert c.get(ADD).status_code == 200
    assert c.get(JOBS).status_code == 403
    apps = [a for a in c.get("/admin/").context["app_list"] if a["app_label"] == "pgbackground"]
    assert apps and {m["object_name"] for m in apps[0]["models"]} >= {"Job"}


def test_owner_sees_only_own_jobs_in_list_and_search(two_owners):
    alice, bob, a_job, b_job, _b_done = two_owners
    c = login(alice)
    r = c.get(JOBS)
    assert r.status_code == 200
    ids = [j.pk for j in r.context["cl"].result_list]
    assert ids == [a_job.pk]
    assert b"bob secret" not in r.content and b"bob-job" not in r.content
    r = c.get(JOBS, {"q": "bob secret"})
    assert list(r.context["cl"].result_list) == []
    r = c.get(JOBS, {"q": f"#{b_job.pk}"})
    assert list(r.context["cl"].result_list) == []
    r = c.get(JOBS, {"owner": str(bob.pk)})
    assert list(r.context["cl"].result_list) == []


def test_idor_no_admin_url_reaches_another_users_job(two_owners):
    alice, _bob, a_job, b_job, b_done = two_owners
    c = login(alice)
    for job in (b_job, b_done):
        r = c.get(job_url(job.pk))
        assert r.status_code == 302  # Django's "doesn't exist" redirect: no hint it exists
        assert b"secret" not in r.content
        assert c.get(job_url(job.pk, "state/")).status_code == 404
        assert c.get(job_url(job.pk, "csv/")).status_code == 404
        assert c.get(job_url(job.pk, "history/")).status_code in (302, 403, 404)
        for action in ("cancel/", "detach/", "relaunch/"):
            assert c.post(job_url(job.pk, action)).status_code == 404
        assert c.get(f"{ADD}?from={job.pk}").context["form"].initial == {}
    r = c.get(f"{JOBS}states/", {"ids": f"{b_job.pk},{b_done.pk},{a_job.pk}"})
    assert [j["id"] for j in r.json()["jobs"]] == [a_job.pk]
    # Bulk actions with B's ids in the POST touch nothing of B's.
    for action in ("cancel_selected", "detach_selected", "relaunch_selected"):
        c.post(JOBS, {"action": action, "_selected_action": [b_job.pk, b_done.pk]})
    b_job.refresh_from_db()
    assert b_job.state == "queued" and not b_job.detached
    assert Job.objects.filter(owner=alice).count() == 1
    # The stats page shows only her own numbers.
    r = c.get(STATS)
    assert r.context["totals"].workers_launched == 1
    assert r.context["per_owner"] == []


def test_view_all_sees_others_but_cannot_act_without_cancel_all(two_owners):
    _alice, _bob, a_job, b_job, b_done = two_owners
    viewer = make_user("viewer", "view_all_jobs")
    c = login(viewer)
    r = c.get(JOBS)
    assert {j.pk for j in r.context["cl"].result_list} == {a_job.pk, b_job.pk, b_done.pk}
    r = c.get(job_url(b_job.pk))
    assert r.status_code == 200
    assert b"bob secret" in r.content
    assert b'id="pgb-cancel-form"' not in r.content
    assert c.post(job_url(b_job.pk, "cancel/")).status_code == 403
    c.post(JOBS, {"action": "cancel_selected", "_selected_action": [b_job.pk]})
    b_job.refresh_from_db()
    assert b_job.state == "queued"


def test_cancel_all_lets_an_operator_cancel_others_jobs(two_owners):
    _alice, _bob, _a_job, b_job, _b_done = two_owners
    op = make_user("op", "view_all_jobs", "cancel_all_jobs")
    c = login(op)
    assert b'id="pgb-cancel-form"' in c.get(job_url(b_job.pk)).content
    r = c.post(job_url(b_job.pk, "cancel/"))
    assert r.status_code == 302
    b_job.refresh_from_db()
    assert b_job.state == "canceled" and b_job.error_sqlstate == "57014"


def test_superuser_sees_and_does_everything(two_owners):
    _alice, _bob, _a_job, b_job, b_done = two_owners
    root = make_user("root", superuser=True)
    c = login(root)
    for url in (JOBS, ADD, WORKERS, STATS, job_url(b_job.pk), job_url(b_done.pk)):
        assert c.get(url).status_code == 200, url
    assert c.post(job_url(b_job.pk, "detach/")).status_code == 302
    assert Job.objects.get(pk=b_job.pk).detached


def test_nobody_edits_or_deletes_a_job_through_django_views(two_owners):
    alice, *_ = two_owners
    root = make_user("root", superuser=True)
    job = make_job(alice, state="stopped", sql="SELECT 42")
    c = login(root)
    page = c.get(job_url(job.pk))
    assert b'name="sql"' not in page.content
    c.post(job_url(job.pk), {"sql": "DROP TABLE x", "label": "hacked"})
    job.refresh_from_db()
    assert job.sql == "SELECT 42" and job.label == ""
    assert c.get(job_url(job.pk, "delete/")).status_code == 403
    assert c.post(job_url(job.pk, "delete/"), {"post": "yes"}).status_code == 403
    actions = [
        a[0]
        for a in c.get(JOBS).context["cl"].model_admin.get_action_choices(c.get(JOBS).wsgi_request)
    ]
    assert "delete_selected" not in actions
    assert Job.objects.filter(pk=job.pk).exists()


def test_actions_need_post_and_csrf(two_owners):
    alice, _bob, _a_job, _b_job, _b_done = two_owners
    mine = make_job(alice, state="queued")
    c = login(alice)
    assert c.get(job_url(mine.pk, "cancel/")).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(job_url(mine.pk, "cancel/")).status_code == 403
    assert (
        strict.post(JOBS, {"action": "cancel_selected", "_selected_action": [mine.pk]}).status_code
        == 403
    )
    mine.refresh_from_db()
    assert mine.state == "queued"
    # With the page's token, the same POST works.
    page = strict.get(job_url(mine.pk))
    token = page.context["csrf_token"]
    assert (
        strict.post(job_url(mine.pk, "cancel/"), {"csrfmiddlewaretoken": str(token)}).status_code
        == 302
    )
    mine.refresh_from_db()
    assert mine.state == "canceled"


def test_purge_needs_delete_permission(two_owners):
    alice, _bob, a_job, _b_job, _b_done = two_owners
    c = login(alice)
    req = c.get(JOBS).wsgi_request
    admin = c.get(JOBS).context["cl"].model_admin
    assert "delete_finished" not in dict(admin.get_action_choices(req))
    c.post(JOBS, {"action": "delete_finished", "_selected_action": [a_job.pk]})
    assert Job.objects.filter(pk=a_job.pk).exists()
    deleter = make_user("deleter", "view_job", "delete_job")
    c = login(deleter)
    assert "delete_finished" in dict(admin.get_action_choices(c.get(JOBS).wsgi_request))
