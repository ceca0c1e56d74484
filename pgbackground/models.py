"""Models: the job record behind every handle, its stored result, the worker registry and
statistics that outlive purged jobs."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from .conf import MAX_LABEL_CHARS
from .fields import CookieField, JobStateField


class JobState(models.TextChoices):
    QUEUED = "queued", _("queued")
    RUNNING = "running", _("running")
    STOPPED = "stopped", _("stopped")
    CANCELED = "canceled", _("canceled")
    ERROR = "error", _("error")


TERMINAL_STATES = frozenset({JobState.STOPPED, JobState.CANCELED, JobState.ERROR})


class JobQuerySet(models.QuerySet["Job"]):
    def active(self) -> JobQuerySet:
        # Two equalities, not ``state IN``: see snapshots.ACTIVE_CONDITION.
        return self.filter(models.Q(state=JobState.QUEUED) | models.Q(state=JobState.RUNNING))

    def finished(self) -> JobQuerySet:
        return self.filter(state__in=TERMINAL_STATES)

    def owned_by(self, owner: Any) -> JobQuerySet:
        return self if owner is None else self.filter(owner=owner)


class Job(models.Model):
    """One background job: the record a :class:`pgbackground.Handle` points at."""

    id = models.BigAutoField(primary_key=True)
    cookie = CookieField(_("cookie"), editable=False)
    sql = models.TextField(_("SQL"))
    label = models.CharField(
        _("label"), max_length=MAX_LABEL_CHARS, blank=True, default="", db_default=""
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="pgbackground_jobs",
        db_index=False,  # pgb_job_owner_idx (owner, -id) serves it
    )
    state = JobStateField(
        _("state"),
        max_length=10,
        choices=JobState.choices,
        default=JobState.QUEUED,
        db_default=JobState.QUEUED.value,
    )

    created_at = models.DateTimeField(_("created"), db_default=Now())
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    worker = models.ForeignKey(
        "Worker",
        verbose_name=_("worker"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        # No index or constraint of its own: every claim and outcome writes worker_id, and each
        # index and deferred foreign-key check costs those writes; pgb_job_running_idx serves
        # recovery, and worker rows are only purged once no job points at them.
        db_index=False,
        db_constraint=False,
    )
    backend_pid = models.IntegerField(_("backend pid"), null=True, blank=True)

    # What the job runs with: the launcher's role and settings, plus overrides.
    role = models.CharField(_("role"), max_length=128, blank=True, default="", db_default="")
    gucs = models.JSONField(_("settings applied"), default=dict, blank=True)
    timeout = models.FloatField(_("timeout (s)"), null=True, blank=True)
    max_result_bytes = models.BigIntegerField(_("result limit (bytes)"))
    fire_and_forget = models.BooleanField(_("fire and forget"), default=False, db_default=False)

    # Handle bookkeeping.
    detached = models.BooleanField(_("detached"), default=False, db_default=False)
    consumed = models.BooleanField(_("result consumed"), default=False, db_default=False)
    consumed_at = models.DateTimeField(_("result consumed at"), null=True, blank=True)
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)
    cancel_deadline = models.DateTimeField(_("cancel deadline"), null=True, blank=True)
    # Backend pid of the launcher connection that LISTENs for this job's end (see replies.py).
    reply_pid = models.IntegerField(_("reply to backend pid"), null=True, blank=True)

    # Live reporting.
    progress_pct = models.FloatField(_("progress %"), null=True, blank=True)
    progress_message = models.TextField(
        _("progress message"), blank=True, default="", db_default=""
    )
    progress_at = models.DateTimeField(_("progress updated"), null=True, blank=True)
    notices = models.JSONField(_("notices"), default=list, blank=True)
    notices_dropped = models.IntegerField(_("notices dropped"), default=0, db_default=0)
    # Bumped by every recorded change, so that event consumers can drop stale events.
    event_seq = models.IntegerField(_("event sequence"), default=0, db_default=0)

    # Outcome.
    command_tag = models.CharField(
        _("command tag"), max_length=64, blank=True, default="", db_default=""
    )
    row_count = models.BigIntegerField(_("rows"), null=True, blank=True)
    result_columns = models.JSONField(_("result columns"), null=True, blank=True)
    result_rows = models.BigIntegerField(_("result rows stored"), null=True, blank=True)
    result_bytes = models.BigIntegerField(_("result bytes stored"), default=0, db_default=0)
    # A result of one small chunk (RESULT_IN_ROW_BYTES at most) is kept in the job's own row,
    # encoded as a JobResultChunk is: the outcome and the consume then write no chunk row.
    # Larger results are JobResultChunk rows. Cleared when the result is consumed or dropped.
    result_data = models.BinaryField(_("result data (in the row)"), null=True, editable=False)
    result_nulls = models.BinaryField(_("result NULLs (in the row)"), null=True, editable=False)
    error_sqlstate = models.CharField(
        _("SQLSTATE"), max_length=5, blank=True, default="", db_default=""
    )
    error_message = models.TextField(_("error message"), blank=True, default="", db_default="")
    error_detail = models.TextField(_("error detail"), blank=True, default="", db_default="")
    error_hint = models.TextField(_("error hint"), blank=True, default="", db_default="")
    error_context = models.TextField(_("error context"), blank=True, default="", db_default="")
    error_position = models.IntegerField(_("error position"), null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        verbose_name = _("background job")
        verbose_name_plural = _("background jobs")
        ordering = ["-id"]
        permissions = [
            ("launch_job", _("Can launch background jobs")),
            ("view_all_jobs", _("Can view every user's background jobs")),
            ("cancel_all_jobs", _("Can cancel or detach every user's background jobs")),
        ]
        indexes = [
            # The pool's claim: oldest queued job first.
            models.Index(
                fields=["id"], name="pgb_job_queued_idx", condition=models.Q(state="queued")
            ),
            # Per-owner limit (MAX_WORKERS) and the owner's active list. The owner indexes
            # leave ownerless jobs out: nothing looks them up by owner, and each index entry is
            # written again by the claim and by the outcome (a state change is never HOT).
            models.Index(
                fields=["owner", "state"],
                name="pgb_job_owner_active_idx",
                condition=models.Q(state__in=["queued", "running"], owner__isnull=False),
            ),
            # Recovery of jobs whose worker died.
            models.Index(
                fields=["worker"],
                name="pgb_job_running_idx",
                condition=models.Q(state="running"),
            ),
            models.Index(
                fields=["owner", "-id"],
                name="pgb_job_owner_idx",
                condition=models.Q(owner__isnull=False),
            ),
            models.Index(fields=["created_at"], name="pgb_job_created_idx"),
            models.Index(
                fields=["finished_at"],
                name="pgb_job_finished_idx",
                condition=models.Q(state__in=["stopped", "canceled", "error"]),
            ),
        ]
        # No CHECK constraints: the state and the cookie are checked by their domains
        # (fields.py says why).

    def __str__(self) -> str:
        return f"#{self.id} {self.label}" if self.label else f"#{self.id}"

    @property
    def is_finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def duration(self) -> float | None:
        """Run time in seconds (started → finished, or → now while running)."""
        if self.started_at is None:
            return None
        from django.utils import timezone

        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class JobResultChunk(models.Model):
    """A batch of result rows, stored as the raw text values PostgreSQL sent the worker.

    ``data`` holds every field of ``nrows`` rows joined by NUL bytes (PostgreSQL's text output
    never contains NUL); ``nulls`` lists, as little-endian uint32, the field positions that are
    SQL NULL. The launcher turns the values back into Python objects with psycopg's own loaders,
    so they have exactly the types a direct query gives.
    """

    id = models.BigAutoField(primary_key=True)
    # Indexed by pgb_chunk_job_seq_uniq (job, seq). No constraint: only the pool inserts chunks,
    # for the job it holds, and the check would cost every outcome a deferred trigger query.
    job = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,
        related_name="result_chunks",
        db_index=False,
        db_constraint=False,
    )
    result_set = models.IntegerField()
    seq = models.IntegerField()
    nrows = models.IntegerField()
    data = models.BinaryField()
    nulls = models.BinaryField(default=b"")

    class Meta:
        verbose_name = _("result chunk")
        verbose_name_plural = _("result chunks")
        constraints = [
            models.UniqueConstraint(fields=["job", "seq"], name="pgb_chunk_job_seq_uniq"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} chunk {self.seq} ({self.nrows} rows)"


class Worker(models.Model):
    """One ``runworkers`` process, with its heartbeat."""

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(_("name"), max_length=200)
    hostname = models.CharField(_("host"), max_length=255)
    pid = models.IntegerField(_("pid"))
    concurrency = models.IntegerField(_("slots"))
    started_at = models.DateTimeField(_("started"), db_default=Now())
    heartbeat_at = models.DateTimeField(_("last heartbeat"), db_default=Now())
    stopped_at = models.DateTimeField(_("stopped"), null=True, blank=True)
    stop_reason = models.CharField(
        _("stop reason"), max_length=200, blank=True, default="", db_default=""
    )

    class Meta:
        verbose_name = _("worker")
        verbose_name_plural = _("workers")
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["heartbeat_at"],
                name="pgb_worker_live_idx",
                condition=models.Q(stopped_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.hostname}:{self.pid})"


class JobStatsArchive(models.Model):
    """Counters of purged jobs, per owner, so that :func:`pgbackground.stats` survives purges."""

    owner_pk = models.BigIntegerField(null=True)
    launched = models.BigIntegerField(default=0, db_default=0)
    completed = models.BigIntegerField(default=0, db_default=0)
    failed = models.BigIntegerField(default=0, db_default=0)
    canceled = models.BigIntegerField(default=0, db_default=0)
    timed_runs = models.BigIntegerField(default=0, db_default=0)
    total_run_ms = models.FloatField(default=0, db_default=0)

    class Meta:
        verbose_name = _("archived job statistics")
        verbose_name_plural = _("archived job statistics")
        constraints = [
            models.UniqueConstraint(
                fields=["owner_pk"],
                name="pgb_stats_one_ownerless_row",
                nulls_distinct=False,
            ),
        ]

    def __str__(self) -> str:
        return f"archived statistics of owner {self.owner_pk}"
