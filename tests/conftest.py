from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.poolproc import PoolProcess


@pytest.fixture
def start_pool(transactional_db: None) -> Iterator[Callable[..., PoolProcess]]:
    """Start ``runworkers`` subprocesses on the test database; stopped after the test."""
    started: list[PoolProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> PoolProcess:
        p = PoolProcess(*args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop()


@pytest.fixture
def pool(start_pool: Callable[..., PoolProcess]) -> PoolProcess:
    """One running pool with two slots."""
    return start_pool("--concurrency", "2")


@pytest.fixture(scope="session", autouse=True)
def _fast_worker_timings() -> None:
    """The test process uses the same short heartbeat timings as the pools it starts (the
    environment of conftest.py reaches the subprocesses; settings were read before it)."""
    import os

    from django.conf import settings

    settings.PGBACKGROUND = {
        **getattr(settings, "PGBACKGROUND", {}),
        "HEARTBEAT_INTERVAL": float(os.environ["PGBACKGROUND_HEARTBEAT_INTERVAL"]),
        "WORKER_LOST_AFTER": float(os.environ["PGBACKGROUND_WORKER_LOST_AFTER"]),
        "POLL_INTERVAL": float(os.environ["PGBACKGROUND_POLL_INTERVAL"]),
    }


@pytest.fixture(scope="session", autouse=True)
def _close_launcher_connections(django_db_setup: None) -> Iterator[None]:
    """pgbackground's own connections must be closed before the test database is dropped."""
    yield
    from pgbackground.db import close_launcher_connections

    close_launcher_connections()
