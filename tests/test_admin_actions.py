"""Bulk actions, job buttons and the launch form (no pool needed: jobs stay queued)."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

import pgbackground as pgb
from pgbackground.models import Job, JobStatsArchive
from tests.admin_support import ADD, JOBS, job_url, make_job, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def op():
    user = make_user("op", "view_job", "launch_job", "delete_job")
    c = Client()
    c.force_login(user)
    c.user = user
    return c


def act(c: Client, action: str, ids: list[int], **extra: str):
    return c.post(JOBS, {"action": action, "_selected_action": ids, **extra}, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_bulk_cancel_and_cancel_with_grace(op):
    q1, q2 = make_job(op.user, state="queued"), make_job(op.user, state="queued")
    done = make_job(op.user, state="stopped")
    r = act(op, "cancel_selected", [q1.pk, done.pk])
    assert "Cancel requested for 1 job." in " ".join(messages_of(r))
    assert "1 selected job was left alone" in " ".join(messages_of(r))
    q1.refresh_from_db()
    assert q1.state == "canceled" and q1.error_sqlstate == "57014"
    r = act(op, "cancel_with_grace", [q2.pk], grace="30")
    q2.refresh_from_db()
    assert q2.state == "canceled"  # a queued job is canceled at once, grace or not
    assert "grace 30.0 s" in " ".join(messages_of(r))
    r = act(op, "cancel_with_grace", [done.pk], grace="-3")
    assert "Grace must be" in " ".join(messages_of(r))


def test_bulk_detach(op):
    job = make_job(op.user, state="queued")
    act(op, "detach_selected", [job.pk])
    job.refresh_from_db()
    assert job.detached and job.state == "queued"


def test_bulk_relaunch_keeps_sql_and_settings(op):
    other = make_user("other", "view_job")
    src = make_job(
        other,
        state="error",
        sql="SELECT 2",
        label="again",
        timeout=12.5,
        max_result_bytes=4096,
        fire_and_forget=True,
        gucs={"work_mem": "8MB"},
    )
    mine = make_job(op.user, state="stopped", sql="SELECT 3", label="mine")
    r = act(op, "relaunch_selected", [src.pk, mine.pk])
    new = Job.objects.exclude(pk__in=[src.pk, mine.pk]).get()
    assert new.sql == "SELECT 3" and new.label == "mine" and new.owner == op.user
    assert "Launched 1 new job" in " ".join(messages_of(r))
    root = make_user("root", superuser=True)
    c = Client()
    c.force_login(root)
    act(c, "relaunch_selected", [src.pk])
    copy = Job.objects.filter(sql="SELECT 2").exclude(pk=src.pk).get()
    assert (copy.label, copy.timeout, copy.max_result_bytes, copy.fire_and_forget) == (
        "again",
        12.5,
        4096,
        True,
    )
    assert copy.gucs["work_mem"] == "8MB" and copy.owner == root and copy.state == "queued"


def test_delete_finished_keeps_statistics(op):
    finished = [make_job(op.user, state=s) for s in ("stopped", "error", "canceled")]
    active = make_job(op.user, state="queued")
    before = pgb.stats()
    r = act(op, "delete_finished", [j.pk for j in finished] + [active.pk])
    assert "Deleted 3 finished jobs." in " ".join(messages_of(r))
    assert list(Job.objects.values_list("pk", flat=True)) == [active.pk]
    after = pgb.stats()
    assert (
        after.workers_launched,
        after.workers_completed,
        after.workers_failed,
        after.workers_canceled,
    ) == (
        before.workers_launched,
        before.workers_completed,
        before.workers_failed,
        before.workers_canceled,
    )
    assert JobStatsArchive.objects.get(owner_pk=op.user.pk).launched == 3


def test_job_page_buttons(op):
    job = make_job(op.user, state="queued", sql="SELECT 5", label="btn")
    r = op.post(job_url(job.pk, "detach/"), follow=True)
    assert "detached" in " ".join(messages_of(r))
    r = op.post(job_url(job.pk, "relaunch/"))
    new = Job.objects.exclude(pk=job.pk).get()
    assert r.status_code == 302 and r["Location"] == job_url(new.pk)
    r = op.post(job_url(job.pk, "cancel/"), {"grace": "5"}, follow=True)
    job.refresh_from_db()
    assert job.state == "canceled"
    r = op.post(job_url(job.pk, "cancel/"), follow=True)
    assert "already finished" in " ".join(messages_of(r))
    r = op.post(job_url(new.pk, "cancel/"), {"grace": "abc"}, follow=True)
    assert "Grace must be" in " ".join(messages_of(r))
    new.refresh_from_db()
    assert new.state == "queued"


# --- the launch form ---------------------------------------------------------------------------


def test_launch_success_redirects_to_the_new_job(op):
    r = op.post(
        ADD,
        {
            "sql": "SELECT 1 AS one",
            "label": "from the form",
            "timeout": "60",
            "max_result_bytes": "100000",
            "gucs": "work_mem = 16MB\n# a comment\n\nsearch_path = 'public, pg_catalog'",
            "fire_and_forget": "on",
        },
    )
    job = Job.objects.get()
    assert r.status_code == 302 and r["Location"] == job_url(job.pk)
    assert job.owner == op.user and job.label == "from the form" and job.timeout == 60
    assert job.max_result_bytes == 100000 and job.fire_and_forget
    assert job.gucs["work_mem"] == "16MB" and job.gucs["search_path"] == "public, pg_catalog"
    page = op.get(r["Location"])
    assert page.status_code == 200 and b"SELECT 1 AS one" in page.content


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"sql": ""}, "sql", "This field is required"),
        ({"sql": "   -- only a comment\n"}, "sql", "sql is empty"),
        ({"sql": "SELECT '\x00'"}, "sql", "Null characters"),
        ({"sql": "SELECT 1", "timeout": "-1"}, "timeout", "greater than or equal to 0"),
        ({"sql": "SELECT 1", "timeout": "soon"}, "timeout", "Enter a number"),
        ({"sql": "SELECT 1", "max_result_bytes": "-5"}, "max_result_bytes", "greater than"),
        ({"sql": "SELECT 1", "label": "x" * 201}, "label", "at most 200"),
        ({"sql": "SELECT 1", "gucs": "work_mem 16MB"}, "gucs", "expected 'name = value'"),
        ({"sql": "SELECT 1", "gucs": "a.b = 1\na.b = 2"}, "gucs", "set twice"),
        ({"sql": "SELECT 1", "gucs": "role = postgres"}, "gucs", "cannot be overridden"),
        ({"sql": "SELECT 1", "gucs": "bad name! = 1"}, "gucs", "invalid setting name"),
        ({"sql": "SELECT 1", "gucs": "no_such_setting = 1"}, "gucs", "no_such_setting"),
        ({"sql": "SELECT 1", "gucs": "work_mem = lots"}, "gucs", "work_mem"),
    ],
)
def test_launch_form_errors_inline(op, data, field, text):
    r = op.post(ADD, data)
    assert r.status_code == 200
    errors = r.context["form"].errors
    assert field in errors, errors
    assert text in " ".join(errors[field]), errors
    assert b"errornote" in r.content
    assert Job.objects.count() == 0


@override_settings(PGBACKGROUND={"MAX_WORKERS": 1})
def test_launch_over_the_owner_limit_says_so(op):
    make_job(op.user, state="queued")
    r = op.post(ADD, {"sql": "SELECT 1"})
    assert r.status_code == 200
    assert "MAX_WORKERS" in " ".join(r.context["form"].non_field_errors())
    assert Job.objects.count() == 1


def test_launch_only_user_returns_to_the_form(op):
    launcher = make_user("launcher", "launch_job")
    c = Client()
    c.force_login(launcher)
    r = c.post(ADD, {"sql": "SELECT 1"}, follow=True)
    assert r.redirect_chain[-1][0] == ADD
    job = Job.objects.get()
    assert f"Job #{job.pk} launched." in messages_of(r)
    assert job.owner == launcher


def test_edit_and_launch_as_new_prefills_the_form(op):
    job = make_job(op.user, sql="SELECT 'again'", label="copy me", timeout=5)
    form = op.get(f"{ADD}?from={job.pk}").context["form"]
    assert form.initial["sql"] == "SELECT 'again'" and form.initial["label"] == "copy me"
    assert op.get(f"{ADD}?from=abc").context["form"].initial == {}
