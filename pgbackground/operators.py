"""The "pgbackground operators" group: the counterpart of pg_background's ``pgbackground_role``.

Migration 0003 creates it; ``manage.py pgbackground grant/revoke`` (and the admin) manage who is
in it, or hand the same permissions to another group.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.utils.translation import gettext as _

OPERATORS_GROUP = "pgbackground operators"
# Codenames on pgbackground.Job: launch, see and act on everyone's jobs, purge (delete) them.
OPERATOR_PERMISSIONS = (
    "launch_job",
    "view_job",
    "view_all_jobs",
    "cancel_all_jobs",
    "change_job",
    "delete_job",
)


class AmbiguousName(ValueError):
    """The name is both a user and a group."""


def operator_permissions() -> list[Permission]:
    """The operator permissions, created first if they are missing (e.g. after a flush)."""
    qs = Permission.objects.filter(
        content_type__app_label="pgbackground",
        content_type__model="job",
        codename__in=OPERATOR_PERMISSIONS,
    )
    perms = list(qs)
    if len(perms) < len(OPERATOR_PERMISSIONS):
        from django.contrib.auth.management import create_permissions

        create_permissions(apps.get_app_config("pgbackground"), verbosity=0)
        perms = list(qs.all())
    missing = set(OPERATOR_PERMISSIONS) - {p.codename for p in perms}
    if missing:  # pragma: no cover - only with a broken install
        raise RuntimeError("missing pgbackground permissions: " + ", ".join(sorted(missing)))
    return perms


def operators_group() -> Group:
    """The operators group with all its permissions (recreated if it was deleted)."""
    with transaction.atomic():
        group, _created = Group.objects.get_or_create(name=OPERATORS_GROUP)
        group.permissions.add(*operator_permissions())
    return group


def resolve(name: str, kind: str | None = None) -> tuple[str, Any]:
    """``("user", user)`` or ``("group", group)`` for a name; ``kind`` forces one.

    LookupError if nothing matches, AmbiguousName if both a user and a group match and no
    ``kind`` was given.
    """
    user_model = get_user_model()
    user = None
    group = None
    if kind in (None, "user"):
        user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: name}).first()
    if kind in (None, "group"):
        group = Group.objects.filter(name=name).first()
    if user is not None and group is not None:
        raise AmbiguousName(
            _("%(name)r is both a user and a group: say which with --user or --group")
            % {"name": name}
        )
    if user is not None:
        return "user", user
    if group is not None:
        return "group", group
    what = {"user": _("user"), "group": _("group")}.get(kind or "", _("user or group"))
    raise LookupError(_("no %(what)s named %(name)r") % {"what": what, "name": name})


def grant_user(user: Any) -> bool:
    """Add ``user`` to the operators group; False if they already were in it."""
    group = operators_group()
    if user.groups.filter(pk=group.pk).exists():
        return False
    user.groups.add(group)
    return True


def revoke_user(user: Any) -> bool:
    """Remove ``user`` from the operators group; False if they were not in it."""
    group = Group.objects.filter(name=OPERATORS_GROUP).first()
    if group is None or not user.groups.filter(pk=group.pk).exists():
        return False
    user.groups.remove(group)
    return True


def grant_group(group: Group) -> list[str]:
    """Give ``group`` the operator permissions; the codenames it did not have yet."""
    perms = operator_permissions()
    had = set(group.permissions.filter(pk__in=[p.pk for p in perms]).values_list("codename",
                                                                                 flat=True))
    group.permissions.add(*perms)
    return sorted(p.codename for p in perms if p.codename not in had)


def revoke_group(group: Group) -> list[str]:
    """Take the operator permissions from ``group``; the codenames it had."""
    perms = [p for p in operator_permissions() if group.permissions.filter(pk=p.pk).exists()]
    group.permissions.remove(*perms)
    return sorted(p.codename for p in perms)
