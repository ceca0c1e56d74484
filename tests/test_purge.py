"""Purging (pgbackground.purge): what goes, what stays, statistics that survive it."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.utils import timezone

import pgbackground as pgb
from pgbackground.handles import cancel_ids
from pgbackground.models import Job, JobResultChunk, JobStatsArchive, Worker
from pgbackground.purge import CONSUMED_RESULT_GRACE, parse_duration, purge
from tests.jobfactory import add_chunks, make_job, wait_for_states

# purge() works on its own connection and commits: the tests need committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def assert_same_stats(before: pgb.Stats, after: pgb.Stats) -> None:
    assert after[:5] == before[:5]
    if before.avg_execution_ms is None:
        assert after.avg_execution_ms is None
    else:
        assert after.avg_execution_ms is not None
        assert math.isclose(after.avg_execution_ms, before.avg_execution_ms, rel_tol=1e-9)


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("0", 0), ("3600", 3600),
     ("1.5h", 5400), ("1d12h", 129600), ("2w", 14 * 86400), (" 10 M ", 600), ("1d 2h 3m 4s",
                                                                            93784)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("text", ["", "abc", "-5", "5x", "d", "1d-2h", "12h junk", "1e3", "h12"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# --- jobs --------------------------------------------------------------------------------------


def test_purge_deletes_only_old_finished_jobs() -> None:
    old = [make_job(s) for s in ("stopped", "error", "canceled")]
    recent = make_job("stopped", finished_ago=timedelta(hours=1))
    queued = make_job("queued")
    running = make_job("running", run=timedelta(days=90))
    # Old, but never finished: a queued job is never purged whatever its age.
    Job.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(days=365))

    report = purge(timedelta(days=30))

    left = set(Job.objects.values_list("pk", flat=True))
    assert left == {recent.pk, queued.pk, running.pk}
    assert not left & {j.pk for j in old}
    assert report.jobs_by_state == {"stopped": 1, "error": 1, "canceled": 1}
    assert report.jobs == 3


def test_stats_are_the_same_before_and_after_purge() -> None:
    alice = User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    for owner in (alice, bob, None):
        for i, state in enumerate(["stopped", "stopped", "error", "canceled", "stopped"]):
            make_job(state, owner=owner, run=timedelta(milliseconds=100 * (i + 1) + 7))
        make_job("canceled", owner=owner, run=None)  # canceled while queued: never ran
        make_job("stopped", owner=owner, finished_ago=timedelta(minutes=5))
        make_job("queued", owner=owner)
        make_job("running", owner=owner)
    owners = (None, alice, bob)
    before = {o: pgb.stats(owner=o) for o in owners}
    assert before[None].workers_launched == 27

    report = purge(timedelta(days=1), batch_size=4)

    assert report.jobs == 18
    assert report.batches >= 5  # 18 jobs in batches of 4
    for o in owners:
        assert_same_stats(before[o], pgb.stats(owner=o))
    archive = {a.owner_pk: a for a in JobStatsArchive.objects.all()}
    assert set(archive) == {alice.pk, bob.pk, None}
    assert archive[None].launched == 6
    assert archive[alice.pk].completed == 3
    assert archive[alice.pk].failed == 1
    assert archive[alice.pk].canceled == 2
    assert archive[alice.pk].timed_runs == 5

    # A second purge adds into the same rows (one ownerless row: NULLs are not distinct).
    make_job("error", owner=None)
    make_job("stopped", owner=alice)
    before2 = {o: pgb.stats(owner=o) for o in owners}
    purge(timedelta(days=1))
    for o in owners:
        assert_same_stats(before2[o], pgb.stats(owner=o))
    assert JobStatsArchive.objects.filter(owner_pk__isnull=True).count() == 1
    assert JobStatsArchive.objects.get(owner_pk=None).launched == 7
    assert JobStatsArchive.objects.get(owner_pk=None).failed == 2


def test_purge_keeps_stats_of_deleted_users() -> None:
    carol = User.objects.create_user("carol")
    make_job("stopped", owner=carol)
    pk = carol.pk
    purge(timedelta(days=1))
    carol.delete()
    assert JobStatsArchive.objects.get(owner_pk=pk).launched == 1
    assert pgb.stats().workers_launched == 1


def test_dry_run_changes_nothing_and_predicts_the_purge() -> None:
    for state in ("stopped", "stopped", "error"):
        add_chunks(make_job(state))
    make_job("queued")
    detached = make_job("stopped", finished_ago=timedelta(minutes=1), detached=True)
    add_chunks(detached, 3)
    stats_before = pgb.stats()

    dry = purge(timedelta(days=1), dry_run=True)

    assert Job.objects.count() == 5
    assert JobResultChunk.objects.count() == 9
    assert not JobStatsArchive.objects.exists()
    assert dry.dry_run
    real = purge(timedelta(days=1))
    assert dry.jobs_by_state == real.jobs_by_state == {"stopped": 2, "error": 1}
    assert (dry.job_chunks, dry.job_chunk_bytes) == (real.job_chunks, real.job_chunk_bytes) == (
        6, 60)
    assert dry.results_dropped == real.results_dropped == 1
    assert dry.result_chunks == real.result_chunks == 3
    assert_same_stats(stats_before, pgb.stats())


def test_purge_deletes_the_chunks_of_purged_jobs() -> None:
    job = make_job("stopped")
    add_chunks(job, 5)
    keep = make_job("stopped", finished_ago=timedelta(minutes=1))
    add_chunks(keep, 2)
    report = purge(timedelta(days=1))
    assert report.job_chunks == 5
    assert list(JobResultChunk.objects.values_list("job_id", flat=True).distinct()) == [keep.pk]


def test_job_retention_defaults_to_the_setting() -> None:
    old = make_job("stopped", finished_ago=timedelta(hours=2))
    young = make_job("stopped", finished_ago=timedelta(minutes=30))
    with override_settings(PGBACKGROUND={"JOB_RETENTION": timedelta(hours=1)}):
        purge()
    assert list(Job.objects.values_list("pk", flat=True)) == [young.pk]
    with override_settings(PGBACKGROUND={"JOB_RETENTION": 60}):  # seconds work too
        purge()
    assert not Job.objects.exists()
    del old


def test_job_retention_none_keeps_jobs() -> None:
    make_job("stopped", finished_ago=timedelta(days=3650))
    with override_settings(PGBACKGROUND={"JOB_RETENTION": None}):
        report = purge()
    assert report.job_cutoff is None
    assert Job.objects.count() == 1


def test_purge_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="negative"):
        purge(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="finite"):
        purge(float("nan"))
    with pytest.raises(TypeError):
        purge("30d")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        purge(batch_size=0)


# --- results -----------------------------------------------------------------------------------


def test_result_retention_drops_chunks_and_keeps_the_job() -> None:
    expired = make_job("stopped", finished_ago=timedelta(days=8), result_bytes=20,
                       result_rows=2, result_columns=[["x", "text", 25]])
    add_chunks(expired)
    fresh = make_job("stopped", finished_ago=timedelta(days=1))
    add_chunks(fresh)
    with override_settings(PGBACKGROUND={"RESULT_RETENTION": timedelta(days=7)}):
        report = purge(None)
    assert report.results_dropped == 1
    assert report.result_chunks == 2
    assert report.result_chunk_bytes == 20
    assert set(JobResultChunk.objects.values_list("job_id", flat=True)) == {fresh.pk}
    expired.refresh_from_db()
    assert expired.result_bytes == 0
    # An unread result that expired: result() says it was dropped instead of giving no rows.
    assert expired.detached
    with pytest.raises(pgb.JobDetached):
        pgb.Handle(expired.pk, expired.cookie).result()


def test_results_kept_in_job_rows_are_purged_and_counted_like_chunks() -> None:
    """A small result lives in its job's row (result_data): the job purge counts it as one
    chunk, the result purge clears it (and marks the unread job detached), and a dry run
    predicts both."""
    in_row = {"result_data": b"x" * 7, "result_nulls": b"\x00" * 4, "result_rows": 1,
              "result_bytes": 11, "result_columns": [["x", "text", 25]]}
    purged_job = make_job("stopped", **in_row)
    expired = make_job("stopped", finished_ago=timedelta(days=8), **in_row)
    fresh = make_job("stopped", finished_ago=timedelta(days=1), **in_row)
    kwargs: dict[str, Any] = {"results_older_than": timedelta(days=7)}

    dry = purge(timedelta(days=30), dry_run=True, **kwargs)
    real = purge(timedelta(days=30), **kwargs)

    assert (dry.job_chunks, dry.job_chunk_bytes) == (real.job_chunks, real.job_chunk_bytes) == (
        1, 11)
    assert (dry.results_dropped, dry.result_chunks, dry.result_chunk_bytes) == (
        real.results_dropped, real.result_chunks, real.result_chunk_bytes) == (1, 1, 11)
    assert not Job.objects.filter(pk=purged_job.pk).exists()
    expired.refresh_from_db()
    assert (expired.result_data, expired.result_nulls, expired.detached) == (None, None, True)
    with pytest.raises(pgb.JobDetached):
        pgb.Handle(expired.pk, expired.cookie).result()
    fresh.refresh_from_db()
    assert bytes(fresh.result_data) == b"x" * 7


def test_result_retention_none_keeps_unread_results() -> None:
    job = make_job("stopped", finished_ago=timedelta(days=3650))
    add_chunks(job)
    with override_settings(PGBACKGROUND={"RESULT_RETENTION": None}):
        purge(None)
    assert JobResultChunk.objects.count() == 2


def test_unreadable_results_are_dropped_at_once() -> None:
    detached = make_job("stopped", finished_ago=timedelta(seconds=1), detached=True)
    fire_and_forget = make_job("error", finished_ago=timedelta(seconds=1), fire_and_forget=True)
    unread = make_job("stopped", finished_ago=timedelta(seconds=1))
    consumed_old = make_job("stopped", consumed=True,
                            finished_ago=CONSUMED_RESULT_GRACE + timedelta(minutes=1))
    consumed_now = make_job("stopped", consumed=True, finished_ago=timedelta(seconds=1))
    running_detached = make_job("running", detached=True)
    for job in (detached, fire_and_forget, unread, consumed_old, consumed_now, running_detached):
        add_chunks(job)

    report = purge(None, results_older_than=timedelta(days=7), batch_size=1)

    assert report.results_dropped == 3
    assert set(JobResultChunk.objects.values_list("job_id", flat=True)) == {
        unread.pk, consumed_now.pk, running_detached.pk}
    assert Job.objects.count() == 6
    consumed_old.refresh_from_db()
    assert not consumed_old.detached  # consumed stays consumed: result() says so


@pytest.mark.pool
def test_expired_result_of_a_real_job(pool) -> None:
    h = pgb.launch("SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
    assert h.wait(timeout=60)
    assert JobResultChunk.objects.filter(job_id=h.id).exists()
    Job.objects.filter(pk=h.id).update(finished_at=timezone.now() - timedelta(days=30))
    report = purge(None, results_older_than=timedelta(days=7))
    assert report.results_dropped == 1
    assert report.result_chunk_bytes > 5000 * 32
    assert not JobResultChunk.objects.filter(job_id=h.id).exists()
    assert h.result_info().row_count == 5000  # the job row stays
    with pytest.raises(pgb.JobDetached, match="dropped"):
        h.result()


# --- never running or queued jobs ----------------------------------------------------------------


@pytest.mark.pool
def test_purge_never_touches_running_or_queued_jobs(pool) -> None:
    done = pgb.launch("SELECT 1")
    assert done.wait(timeout=60)
    sleepers = [pgb.launch("SELECT pg_sleep(120)", label=f"sleep {i}") for i in range(3)]
    # Two slots: the first two run, the third waits in the queue.
    wait_for_states([h.id for h in sleepers[:2]], {"running"})
    assert sleepers[2].state == "queued"
    # Even very old-looking active jobs stay.
    Job.objects.filter(pk__in=[h.id for h in sleepers]).update(
        created_at=timezone.now() - timedelta(days=400))
    before = pgb.stats()

    report = purge(0, results_older_than=0)

    assert report.jobs_by_state == {"stopped": 1}
    assert not Job.objects.filter(pk=done.id).exists()
    states = dict(Job.objects.filter(pk__in=[h.id for h in sleepers]).values_list("pk", "state"))
    assert states == {sleepers[0].id: "running", sleepers[1].id: "running",
                      sleepers[2].id: "queued"}
    assert_same_stats(before, pgb.stats())
    assert Worker.objects.filter(pk=pool.worker_id).exists()  # a live worker stays

    cancel_ids([h.id for h in sleepers])
    for h in sleepers:
        assert h.wait(timeout=60)
        assert h.error_info().sqlstate == "57014"  # state: see test_cli's cancel race note


# --- workers -----------------------------------------------------------------------------------


def test_old_stopped_workers_are_deleted_unless_a_job_needs_them() -> None:
    long_ago = timezone.now() - timedelta(days=90)
    gone = Worker.objects.create(name="a", hostname="h", pid=1, concurrency=1,
                                 stopped_at=long_ago, heartbeat_at=long_ago)
    silent = Worker.objects.create(name="b", hostname="h", pid=2, concurrency=1,
                                   heartbeat_at=long_ago)
    referenced = Worker.objects.create(name="c", hostname="h", pid=3, concurrency=1,
                                       stopped_at=long_ago, heartbeat_at=long_ago)
    make_job("stopped", finished_ago=timedelta(hours=1), worker=referenced)
    recent = Worker.objects.create(name="d", hostname="h", pid=4, concurrency=1,
                                   stopped_at=timezone.now())
    live = Worker.objects.create(name="e", hostname="h", pid=5, concurrency=1)

    report = purge(timedelta(days=30))

    assert report.workers == 2
    assert set(Worker.objects.values_list("pk", flat=True)) == {referenced.pk, recent.pk, live.pk}
    del gone, silent
