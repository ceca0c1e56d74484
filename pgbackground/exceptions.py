"""The exception hierarchy of the public API (every class subclasses :class:`BackgroundError`)."""

from __future__ import annotations

from typing import Any


class BackgroundError(Exception):
    """Base class of every error raised by pgbackground."""

    sqlstate: str | None = None


class JobError(BackgroundError):
    """The job's SQL failed; carries the worker's real SQLSTATE and diagnostics."""

    def __init__(
        self,
        sqlstate: str | None,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        context: str | None = None,
        *,
        job_id: int | None = None,
    ) -> None:
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.context = context
        self.job_id = job_id
        super().__init__(message)

    def __str__(self) -> str:
        text = f"{self.message} (SQLSTATE {self.sqlstate})" if self.sqlstate else self.message
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_job_error,
            (type(self), self.sqlstate, self.message, self.detail, self.hint, self.context,
             self.job_id),
        )


def _rebuild_job_error(cls: type[JobError], *args: Any) -> JobError:
    *fields, job_id = args
    return cls(*fields, job_id=job_id)


class JobCanceled(JobError):
    """The job was canceled (SQLSTATE 57014): by cancel(), a timeout or shutdown."""


class WorkerLost(JobError):
    """The worker running the job died or lost its connection (SQLSTATE 08006)."""


class InvalidHandle(BackgroundError):
    """Unknown job id or wrong cookie (deliberately one error: no hint which)."""

    sqlstate = "42704"

    def __init__(self, message: str = "invalid pgbackground handle") -> None:
        super().__init__(message)


class ResultConsumed(BackgroundError):
    """The result was already fetched: a result can be consumed once."""

    sqlstate = "55000"


class JobDetached(BackgroundError):
    """The job is detached or was submitted fire-and-forget: it has no result to fetch."""

    sqlstate = "55000"


class TooManyJobs(BackgroundError):
    """The owner has MAX_WORKERS queued or running jobs (SQLSTATE 53400, like pg_background)."""

    sqlstate = "53400"


def error_for(
    sqlstate: str | None,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
    context: str | None = None,
    *,
    job_id: int | None = None,
) -> JobError:
    """The JobError subclass that fits a recorded SQLSTATE."""
    cls: type[JobError] = JobError
    if sqlstate == "57014":
        cls = JobCanceled
    elif sqlstate == "08006":
        cls = WorkerLost
    return cls(sqlstate, message, detail, hint, context, job_id=job_id)
