"""The module-level API: launch/submit (sync and async), list, stats, detach/cancel all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asgiref.sync import sync_to_async

from . import launcher
from .handles import AsyncHandle, Handle, cancel_ids, detach_ids


def launch(
    sql: str,
    *,
    label: str | None = None,
    timeout: float | None = None,
    gucs: Mapping[str, object] | None = None,
    owner: Any = None,
    max_result_bytes: int | None = None,
    on_commit: bool = False,
) -> Handle:
    """Run ``sql`` in the background; returns a :class:`Handle` at once.

    The job commits on its own (even if the caller's transaction rolls back), runs as the
    caller's current role with its session settings (``gucs`` overrides them), and is bounded by
    ``timeout`` seconds (default ``PGBACKGROUND["WORKER_TIMEOUT"]``, 0/None = none). With
    ``on_commit=True`` it is queued only if the caller's transaction commits. Raises TypeError /
    ValueError for bad arguments and TooManyJobs when ``owner`` has MAX_WORKERS active jobs.
    """
    return launcher.launch(
        sql,
        label=label,
        timeout=timeout,
        gucs=gucs,
        owner=owner,
        max_result_bytes=max_result_bytes,
        on_commit=on_commit,
    )


def submit(
    sql: str,
    *,
    label: str | None = None,
    timeout: float | None = None,
    gucs: Mapping[str, object] | None = None,
    owner: Any = None,
    max_result_bytes: int | None = None,
    on_commit: bool = False,
) -> Handle:
    """Like :func:`launch`, fire-and-forget: result rows are never kept (state, errors and
    notices are)."""
    return launcher.launch(
        sql,
        label=label,
        timeout=timeout,
        gucs=gucs,
        owner=owner,
        max_result_bytes=max_result_bytes,
        on_commit=on_commit,
        fire_and_forget=True,
    )


async def alaunch(sql: str, **kwargs: Any) -> AsyncHandle:
    """:func:`launch` for asyncio code; returns an :class:`AsyncHandle`."""
    h = await sync_to_async(launch)(sql, **kwargs)
    return AsyncHandle(h.id, h.cookie)


async def asubmit(sql: str, **kwargs: Any) -> AsyncHandle:
    """:func:`submit` for asyncio code; returns an :class:`AsyncHandle`."""
    h = await sync_to_async(submit)(sql, **kwargs)
    return AsyncHandle(h.id, h.cookie)


def list_jobs(owner: Any = None) -> Any:
    """Jobs (a QuerySet of :class:`pgbackground.models.Job`), newest first; one owner's if given."""
    from .db import models_alias
    from .launcher import validate_owner
    from .models import Job

    owner_pk = validate_owner(owner)
    qs = Job.objects.using(models_alias()).order_by("-id")
    return qs if owner_pk is None else qs.filter(owner_id=owner_pk)


def _owned_ids(owner: Any, *, active_only: bool) -> list[int]:
    qs = list_jobs(owner)
    qs = (
        qs.active()
        if active_only
        else qs.filter(detached=False, consumed=False, fire_and_forget=False)
    )
    return list(qs.values_list("id", flat=True))


def detach_all(owner: Any = None) -> int:
    """Detach every tracked job (of ``owner``, or all): how many were detached."""
    ids = _owned_ids(owner, active_only=False)
    return len(detach_ids(ids)) if ids else 0


def cancel_all(owner: Any = None) -> int:
    """Cancel every queued or running job (of ``owner``, or all): how many were canceled.

    Queued jobs are canceled at once; running ones are asked to stop (no grace)."""
    ids = _owned_ids(owner, active_only=True)
    return len(cancel_ids(ids)) if ids else 0
