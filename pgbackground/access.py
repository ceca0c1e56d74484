"""Who may follow which job live (websocket and JSON polling alike).

- a job: its owner holding ``view_job``, staff holding ``view_all_jobs`` (superusers), or anyone
  presenting the job's cookie — the handle is the capability, as in pg_background;
- the feed: every job for staff with ``view_all_jobs``, one's own jobs with ``view_job``.

Refusals say nothing about the job: an unknown id and a wrong cookie are refused alike, after the
same constant-time comparison.
"""

from __future__ import annotations

import hmac
from typing import Any

from .snapshots import Snapshot

VIEW_OWN_PERM = "pgbackground.view_job"
VIEW_ALL_PERM = "pgbackground.view_all_jobs"
_INT64 = (-(1 << 63), (1 << 63) - 1)


class FeedScope:
    """Which jobs a feed may show: all of them (``owner_id`` None) or one owner's."""

    __slots__ = ("owner_id",)

    def __init__(self, owner_id: int | None) -> None:
        self.owner_id = owner_id

    def allows(self, owner_id: int | None) -> bool:
        return self.owner_id is None or owner_id == self.owner_id


def _active(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def sees_all_jobs(user: Any) -> bool:
    """Staff (or superuser) holding ``view_all_jobs``. Runs queries: call it off the event loop."""
    return _active(user) and bool(user.is_staff) and user.has_perm(VIEW_ALL_PERM)


def sees_own_jobs(user: Any) -> bool:
    """A user holding ``view_job`` (or ``view_all_jobs``) may follow the jobs they own."""
    return _active(user) and (user.has_perm(VIEW_OWN_PERM) or sees_all_jobs(user))


def feed_scope(user: Any) -> FeedScope | None:
    """The jobs ``user``'s feed shows, or None when the user may not have a feed."""
    if sees_all_jobs(user):
        return FeedScope(None)
    if sees_own_jobs(user):
        return FeedScope(int(user.pk))
    return None


def parse_cookie(text: str | None) -> int | None:
    """A cookie from a query string: a signed 64-bit integer, or None for anything else."""
    if not text or len(text) > 20:
        return None
    try:
        value = int(text, 10)
    except ValueError:
        return None
    return value if _INT64[0] <= value <= _INT64[1] and value != 0 else None


def _cookie_bytes(cookie: int) -> bytes:
    return int(cookie).to_bytes(8, "big", signed=True)


def cookie_matches(stored: int | None, presented: int | None) -> bool:
    """Constant-time comparison; a missing job or cookie never matches (same work either way)."""
    ok = hmac.compare_digest(_cookie_bytes(stored or 0), _cookie_bytes(presented or 0))
    return ok and stored is not None and presented is not None


def may_view(user: Any, snap: Snapshot | None, cookie: int | None) -> bool:
    """Whether ``user`` (or the bearer of ``cookie``) may follow the job ``snap`` (None: unknown
    job). Runs permission queries: call it off the event loop."""
    by_cookie = cookie_matches(None if snap is None else snap.cookie, cookie)
    if snap is None:
        return False
    if by_cookie:
        return True
    if sees_all_jobs(user):
        return True
    return (
        snap.owner_id is not None
        and _active(user)
        and snap.owner_id == user.pk
        and sees_own_jobs(user)
    )


def job_status_for(user: Any, job_id: int, cookie: int | None) -> dict[str, Any] | None:
    """The snapshot message of job ``job_id`` if ``user`` / ``cookie`` may see it, else None
    (also None for an unknown job): the body of a JSON polling endpoint."""
    from .db import launcher_connection
    from .snapshots import by_ids

    found = by_ids(launcher_connection(), [job_id])
    snap = found[0] if found else None
    return snap.message if may_view(user, snap, cookie) and snap is not None else None
