"""manage.py check explains a wrong PGBACKGROUND setup."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import override_settings


def ids(settings_value):
    with override_settings(PGBACKGROUND=settings_value):
        return sorted(m.id for m in run_checks() if m.id.startswith("pgbackground"))


def test_defaults_pass():
    assert ids({}) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"MAX_WORKERS": 0}, "pgbackground.E003"),
        ({"MAX_WORKERS": "16"}, "pgbackground.E003"),
        ({"WORKER_TIMEOUT": -1}, "pgbackground.E004"),
        ({"DEFAULT_MAX_RESULT_BYTES": 1.5}, "pgbackground.E005"),
        ({"HEARTBEAT_INTERVAL": 0}, "pgbackground.E006"),
        ({"POLL_INTERVAL": float("nan")}, "pgbackground.E008"),
        ({"CHUNK_BYTES": 10}, "pgbackground.E010"),
        ({"JOB_RETENTION": "30 days"}, "pgbackground.E012"),
        ({"RESULT_RETENTION": timedelta(days=-1)}, "pgbackground.E013"),
        ({"HEARTBEAT_INTERVAL": 5, "WORKER_LOST_AFTER": 6}, "pgbackground.E014"),
        ({"DATABASE": "nope"}, "pgbackground.E015"),
        ({"CARRY_SESSION_SETTINGS": "no"}, "pgbackground.E020"),
        ({"CACHE_SESSION_SETTINGS": 1}, "pgbackground.E021"),
        ({"MAX_WORKER": 3}, "pgbackground.E002"),
    ],
)
def test_bad_values_fail_check(value, expected):
    assert expected in ids(value)


def test_check_command_fails_with_a_clear_message():
    from django.core.management.base import SystemCheckError

    with (
        override_settings(PGBACKGROUND={"MAX_WORKERS": -3}),
        pytest.raises(SystemCheckError, match=r"MAX_WORKERS.*integer >= 1"),
    ):
        call_command("check")


@pytest.mark.django_db
def test_deploy_check_warns_about_a_superuser_login():
    from pgbackground.checks import check_jobs_login

    warnings = check_jobs_login()
    assert [w.id for w in warnings] == ["pgbackground.W001"]  # the tests connect as postgres


@pytest.mark.django_db
def test_migrations_match_the_models():
    call_command("makemigrations", "pgbackground", "--check", "--dry-run", verbosity=0)
