"""Helpers of the admin tests: users with given permissions and job rows in any state."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from pgbackground.launcher import new_cookie
from pgbackground.models import Job, Worker

JOBS = "/admin/pgbackground/job/"
WORKERS = "/admin/pgbackground/worker/"
STATS = "/admin/pgbackground/job/stats/"
ADD = "/admin/pgbackground/job/add/"


def job_url(job_id: int, suffix: str = "change/") -> str:
    return f"{JOBS}{job_id}/{suffix}"


def make_user(username: str, *perms: str, staff: bool = True, superuser: bool = False) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=staff, is_superuser=superuser)
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="pgbackground", codename=codename)
        )
    return User.objects.get(pk=user.pk)  # fresh permission cache


def make_job(
    owner: Any = None, state: str = "stopped", sql: str = "SELECT 1", **fields: Any
) -> Job:
    now = timezone.now()
    defaults: dict[str, Any] = {
        "cookie": new_cookie(),
        "sql": sql,
        "owner": owner,
        "state": state,
        "max_result_bytes": 1 << 20,
    }
    if state != "queued":
        defaults["started_at"] = now - datetime.timedelta(seconds=2)
    if state in ("stopped", "canceled", "error"):
        defaults["finished_at"] = now
    defaults.update(fields)
    return Job.objects.create(**defaults)


def make_worker(alive: bool = True, **fields: Any) -> Worker:
    w = Worker.objects.create(
        name=fields.pop("name", "w1"), hostname="db1", pid=4242, concurrency=2, **fields
    )
    if not alive:
        Worker.objects.filter(pk=w.pk).update(
            heartbeat_at=timezone.now() - datetime.timedelta(hours=1)
        )
    return Worker.objects.get(pk=w.pk)
