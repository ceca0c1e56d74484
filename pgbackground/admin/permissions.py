"""Who may see and act on which jobs in the admin (one place, so every screen agrees).

Mirrors pg_background's no-PUBLIC grants: nothing by default. Superusers see and do everything;
otherwise ``launch_job`` launches, ``view_job`` shows one's own jobs, ``view_all_jobs`` shows
everyone's, ``cancel_all_jobs`` cancels/detaches everyone's (among those one can see), and
Django's ``delete_job`` allows deleting finished jobs one may act on.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

APP = "pgbackground"
LAUNCH = f"{APP}.launch_job"
VIEW_OWN = f"{APP}.view_job"
VIEW_ALL = f"{APP}.view_all_jobs"
CANCEL_ALL = f"{APP}.cancel_all_jobs"
DELETE = f"{APP}.delete_job"

# The codenames an operators group gets (pg_background's pgbackground_role counterpart); a data
# migration or ``manage.py pgbackground grant`` can use this list.
OPERATOR_PERMISSIONS = ("launch_job", "view_job", "view_all_jobs", "cancel_all_jobs", "view_worker")


def _active(user: Any) -> bool:
    return bool(user is not None and user.is_active and user.is_authenticated)


def can_view_all(user: Any) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm(VIEW_ALL))


def can_view_own(user: Any) -> bool:
    return _active(user) and (
        user.is_superuser or user.has_perm(VIEW_OWN) or user.has_perm(VIEW_ALL)
    )


def can_launch(user: Any) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm(LAUNCH))


def can_cancel_all(user: Any) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm(CANCEL_ALL))


def can_delete(user: Any) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm(DELETE))


def can_use_app(user: Any) -> bool:
    """Whether the app shows up at all (index, module pages)."""
    return can_view_own(user) or can_launch(user)


def visible_jobs(user: Any, qs: QuerySet[Any]) -> QuerySet[Any]:
    """The jobs of ``qs`` that ``user`` may see."""
    if can_view_all(user):
        return qs
    if can_view_own(user):
        return qs.filter(owner_id=user.pk)
    return qs.none()


def actionable_jobs(user: Any, qs: QuerySet[Any]) -> QuerySet[Any]:
    """The jobs of ``qs`` that ``user`` may cancel or detach (visible, and own or cancel_all)."""
    qs = visible_jobs(user, qs)
    if can_cancel_all(user):
        return qs
    return qs.filter(owner_id=user.pk)


def can_view_job(user: Any, job: Any) -> bool:
    if can_view_all(user):
        return True
    return can_view_own(user) and job.owner_id is not None and job.owner_id == user.pk


def can_act_on_job(user: Any, job: Any) -> bool:
    if not can_view_job(user, job):
        return False
    return can_cancel_all(user) or (job.owner_id is not None and job.owner_id == user.pk)
