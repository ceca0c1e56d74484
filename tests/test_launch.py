"""launch()/submit() argument checking, limits and transactional behaviour (no pool needed)."""

from __future__ import annotations

import math

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection, transaction
from django.test import override_settings

import pgbackground as pgb
from pgbackground.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def _refused(exc_type, match=None, **kwargs):
    sql = kwargs.pop("sql", "SELECT 1")
    before = Job.objects.count()
    with pytest.raises(exc_type, match=match):
        pgb.launch(sql, **kwargs)
    assert Job.objects.count() == before, "a refused launch must not create a job"


@pytest.mark.parametrize(
    ("sql", "exc", "match"),
    [
        ("", ValueError, "empty"),
        ("   \n\t ", ValueError, "empty"),
        ("-- just a comment\n/* and another */ ;", ValueError, "empty"),
        (";;", ValueError, "empty"),
        ("SELECT 1\x00", ValueError, "NUL"),
        (None, TypeError, "str"),
        (42, TypeError, "str"),
        (b"SELECT 1", TypeError, "str"),
    ],
)
def test_bad_sql_is_refused(sql, exc, match):
    _refused(exc, match, sql=sql)


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("5", TypeError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_bad_timeout_is_refused(timeout, exc):
    _refused(exc, timeout=timeout)


@pytest.mark.parametrize(
    ("value", "exc"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("1", TypeError)]
)
def test_bad_max_result_bytes_is_refused(value, exc):
    _refused(exc, max_result_bytes=value)


@pytest.mark.parametrize(
    ("label", "exc"), [("x" * 201, ValueError), (5, TypeError), ("a\x00b", ValueError)]
)
def test_bad_label_is_refused(label, exc):
    _refused(exc, label=label)


@pytest.mark.parametrize(
    ("gucs", "exc", "match"),
    [
        ({"no_such_setting": "1"}, ValueError, "42704"),
        ({"work_mem": "lots"}, ValueError, "22023"),
        ({"statement_timeout": -5}, ValueError, "22023"),
        ({"role": "postgres"}, ValueError, "cannot be overridden"),
        ({"ROLE": "postgres"}, ValueError, "cannot be overridden"),
        ({"session_authorization": "postgres"}, ValueError, "cannot be overridden"),
        ({"DateStyle": "German"}, ValueError, "cannot be overridden"),
        ({"work_mem; DROP TABLE x": "1"}, ValueError, "invalid setting name"),
        ({"": "1"}, ValueError, "invalid setting name"),
        ({1: "1"}, TypeError, "names must be str"),
        ({"work_mem": None}, TypeError, "value must be"),
        ({"work_mem": ["1MB"]}, TypeError, "value must be"),
        ({"work_mem": "1MB\x00"}, ValueError, "NUL"),
        ({"myapp.tenant": "x" * 9000}, ValueError, "longer than"),
        ([("work_mem", "1MB")], TypeError, "mapping"),
        ("work_mem=1MB", TypeError, "mapping"),
    ],
)
def test_bad_gucs_are_refused(gucs, exc, match):
    _refused(exc, match, gucs=gucs)


def test_custom_dotted_settings_are_accepted():
    h = pgb.launch("SELECT current_setting('myapp.tenant')", gucs={"myapp.tenant": "acme"})
    assert h.job().gucs["myapp.tenant"] == "acme"


def test_bad_owner_is_refused():
    _refused(TypeError, owner="bob")
    _refused(TypeError, owner=AnonymousUser())
    _refused(ValueError, owner=get_user_model()(username="unsaved"))


def test_on_commit_must_be_bool():
    _refused(TypeError, on_commit="yes")


def test_launch_returns_a_queued_handle_with_the_job_row():
    h = pgb.launch("SELECT 1", label="first", timeout=2.5)
    assert isinstance(h, pgb.Handle)
    job = h.job()
    assert (job.id, job.cookie, job.sql, job.label, job.state) == (
        h.id,
        h.cookie,
        "SELECT 1",
        "first",
        "queued",
    )
    assert job.timeout == 2.5
    assert job.fire_and_forget is False
    assert h.state == "queued"
    assert pgb.list_jobs().first().id == h.id


def test_wait_times_out_without_a_pool():
    h = pgb.launch("SELECT 1")
    assert h.wait(timeout=0.2) is False
    assert h.wait(timeout=0) is False
    with pytest.raises(ValueError):
        h.wait(timeout=-1)


def test_worker_timeout_setting_is_the_default_timeout():
    with override_settings(PGBACKGROUND={"WORKER_TIMEOUT": 7}):
        assert pgb.launch("SELECT 1").job().timeout == 7
        assert pgb.launch("SELECT 1", timeout=2).job().timeout == 2
        assert pgb.launch("SELECT 1", timeout=0).job().timeout is None
    assert pgb.launch("SELECT 1").job().timeout is None


def test_max_result_bytes_default_comes_from_settings():
    with override_settings(PGBACKGROUND={"DEFAULT_MAX_RESULT_BYTES": 1234}):
        assert pgb.launch("SELECT 1").job().max_result_bytes == 1234
    assert pgb.launch("SELECT 1", max_result_bytes=99).job().max_result_bytes == 99


def test_launch_is_autonomous_when_the_caller_rolls_back():
    with pytest.raises(RuntimeError), transaction.atomic():
        h = pgb.launch("SELECT 1", label="audit")
        raise RuntimeError("the request failed")
    assert h.state == "queued"
    assert Job.objects.filter(pk=h.id, label="audit").exists()


def test_on_commit_launch_is_dropped_when_the_caller_rolls_back():
    with pytest.raises(RuntimeError), transaction.atomic():
        h = pgb.launch("SELECT 1", on_commit=True)
        raise RuntimeError("the request failed")
    assert not Job.objects.filter(pk=h.id).exists()
    with pytest.raises(pgb.InvalidHandle):
        h.state  # noqa: B018


def test_on_commit_launch_is_queued_when_the_caller_commits():
    with transaction.atomic():
        h = pgb.launch("SELECT 1", on_commit=True)
    assert h.state == "queued"


def test_session_settings_and_role_are_captured():
    with connection.cursor() as c:
        c.execute("SET work_mem = '7MB'")
        c.execute("SET search_path = public, pg_catalog")
        c.execute("SET application_name = 'not carried'")
    try:
        job = pgb.launch("SELECT 1", gucs={"lock_timeout": "3s"}).job()
    finally:
        with connection.cursor() as c:
            c.execute("RESET ALL")
    assert job.gucs["work_mem"] == "7168"  # pg_settings' base unit (kB)
    assert job.gucs["search_path"] == "public, pg_catalog"
    assert job.gucs["lock_timeout"] == "3s"
    assert "application_name" not in job.gucs
    assert job.role == connection.settings_dict.get("USER", "postgres")


def test_owner_limit_raises_too_many_jobs():
    user = get_user_model().objects.create(username="alice")
    other = get_user_model().objects.create(username="bob")
    with override_settings(PGBACKGROUND={"MAX_WORKERS": 2}):
        pgb.launch("SELECT 1", owner=user)
        pgb.launch("SELECT 1", owner=user)
        with pytest.raises(pgb.TooManyJobs) as info:
            pgb.launch("SELECT 1", owner=user)
        assert info.value.sqlstate == "53400"
        with pytest.raises(pgb.TooManyJobs):
            pgb.launch("SELECT 1", owner=user, on_commit=True)
        # Other owners and ownerless jobs are not counted against alice.
        pgb.launch("SELECT 1", owner=other)
        for _ in range(3):
            pgb.launch("SELECT 1")
        assert Job.objects.filter(owner=user).count() == 2
        # A finished job frees a place.
        first = Job.objects.filter(owner=user).order_by("id").first()
        pgb.handles.cancel_ids([first.id])
        pgb.launch("SELECT 1", owner=user)


def test_cancel_of_a_queued_job_never_runs_it():
    h = pgb.launch("SELECT 1")
    h.cancel()
    job = h.job()
    assert job.state == "canceled"
    assert job.started_at is None and job.finished_at is not None
    assert job.error_sqlstate == "57014"
    with pytest.raises(pgb.JobCanceled) as info:
        h.result()
    assert info.value.sqlstate == "57014"
    finished_at = job.finished_at
    h.cancel()  # a finished job: nothing changes
    assert h.job().finished_at == finished_at


def test_cancel_grace_is_validated_and_capped():
    h = pgb.launch("SELECT 1")
    with pytest.raises(ValueError):
        h.cancel(grace=-1)
    with pytest.raises(TypeError):
        h.cancel(grace="soon")
    assert h.state == "queued"
    h.cancel(grace=10**9)
    assert h.state == "canceled"


def test_detach_and_cancel_all_by_owner():
    alice = get_user_model().objects.create(username="alice")
    bob = get_user_model().objects.create(username="bob")
    a1 = pgb.launch("SELECT 1", owner=alice)
    pgb.launch("SELECT 1", owner=alice)
    b1 = pgb.launch("SELECT 1", owner=bob)
    assert pgb.cancel_all(owner=alice) == 2
    assert a1.state == "canceled" and b1.state == "queued"
    assert pgb.cancel_all(owner=alice) == 0
    assert pgb.detach_all(owner=bob) == 1
    assert b1.job().detached
    assert pgb.detach_all(owner=bob) == 0
    assert [j.id for j in pgb.list_jobs(owner=bob)] == [b1.id]
    assert pgb.stats(owner=alice).workers_canceled == 2
    assert pgb.stats().workers_launched == 3


def test_list_jobs_is_newest_first_and_has_the_spec_fields():
    ids = [pgb.launch(f"SELECT {i}").id for i in range(3)]
    jobs = list(pgb.list_jobs())
    assert [j.id for j in jobs] == ids[::-1]
    for field in ("id", "cookie", "sql", "label", "owner", "state"):
        assert hasattr(jobs[0], field)


def test_stats_of_an_empty_table():
    s = pgb.stats()
    assert (s.workers_launched, s.workers_active, s.avg_execution_ms) == (0, 0, None)
    assert s.max_workers == 16
