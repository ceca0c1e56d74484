"""``manage.py check`` explains a wrong wiring: websocket routes missing, no live worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.checks import Tags, run_checks
from django.test import override_settings
from django.utils import timezone

from pgbackground.models import Worker
from pgbackground.setup_checks import check_asgi_routing, check_worker_heartbeat

APPS = "tests.setup_checks_asgi"


def ids(messages: list) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.parametrize("app", ["routed", "nested", "opaque"])
def test_routed_asgi_application_passes(app: str) -> None:
    with override_settings(ASGI_APPLICATION=f"{APPS}.{app}"):
        assert check_asgi_routing() == []


@pytest.mark.parametrize("app", ["http_only", "feed_only", "plain"])
def test_asgi_application_without_the_routes_warns(app: str) -> None:
    with override_settings(ASGI_APPLICATION=f"{APPS}.{app}"):
        (msg,) = check_asgi_routing()
    assert msg.id == "pgbackground.W010"
    assert "pgbackground.routing.websocket_urlpatterns" in msg.msg
    assert "polling" in msg.msg
    assert "URLRouter(websocket_urlpatterns)" in (msg.hint or "")


def test_opaque_wrapper_in_a_module_without_the_routes_warns() -> None:
    with override_settings(ASGI_APPLICATION="tests.setup_checks_asgi_opaque.application"):
        assert ids(check_asgi_routing()) == ["pgbackground.W010"]


def test_unimportable_asgi_application_warns() -> None:
    with override_settings(ASGI_APPLICATION="tests.no_such_module.application"):
        (msg,) = check_asgi_routing()
    assert msg.id == "pgbackground.W011"
    assert "tests.no_such_module.application" in msg.msg


def test_no_asgi_application_no_warning() -> None:
    with override_settings(ASGI_APPLICATION=None):
        assert check_asgi_routing() == []


def test_the_demo_asgi_application_passes() -> None:
    with override_settings(ASGI_APPLICATION="demo.asgi.application"):
        assert check_asgi_routing() == []


def test_registered_with_the_check_framework() -> None:
    with override_settings(ASGI_APPLICATION=f"{APPS}.http_only"):
        assert "pgbackground.W010" in ids(run_checks(tags=[Tags.urls]))


def _worker(**fields: object) -> Worker:
    return Worker.objects.create(hostname="h", name="w", pid=1, concurrency=1, **fields)


@pytest.mark.django_db
def test_no_worker_at_all_warns() -> None:
    (msg,) = check_worker_heartbeat(databases=["default"])
    assert msg.id == "pgbackground.W012"
    assert "runworkers" in (msg.hint or "")


@pytest.mark.django_db
def test_live_worker_passes() -> None:
    _worker()  # heartbeat_at defaults to now() in the database
    assert check_worker_heartbeat(databases=["default"]) == []
    assert "pgbackground.W012" not in ids(
        run_checks(tags=[Tags.database], databases=["default"])
    )


@pytest.mark.django_db
def test_silent_or_stopped_workers_warn() -> None:
    _worker(heartbeat_at=timezone.now() - timedelta(hours=1))
    _worker(stopped_at=timezone.now())
    assert ids(check_worker_heartbeat(databases=["default"])) == ["pgbackground.W012"]
    assert "pgbackground.W012" in ids(run_checks(tags=[Tags.database], databases=["default"]))


def test_heartbeat_check_skipped_without_databases() -> None:
    # No database access at all (pytest-django would fail the test on a query).
    assert check_worker_heartbeat() == []
    assert check_worker_heartbeat(databases=None) == []


@pytest.mark.pool
def test_running_pool_passes(pool: object) -> None:
    assert check_worker_heartbeat(databases=["default"]) == []
