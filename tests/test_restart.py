"""A PostgreSQL restart is survived: running jobs end in error, queued jobs run afterwards, the
pool reconnects by itself and wait() callers get an answer (on a scratch cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import scratch_cluster
from tests.poolproc import ROOT, PoolProcess

pytestmark = pytest.mark.pool

if not scratch_cluster.available():  # pragma: no cover - Debian's tools are in CI
    pytest.fail("these tests need Debian's pg_createcluster (postgresql-common)")


def test_postgresql_restart_is_survived():
    with scratch_cluster.scratch_cluster() as cluster:
        cluster.psql("CREATE DATABASE pgb")
        env = {**os.environ, "DATABASE_URL": cluster.url("pgb")}
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env,
                       check=True)
        pool = PoolProcess("--concurrency", "2", env={"DATABASE_URL": cluster.url("pgb")})
        driver = subprocess.Popen([sys.executable, "-m", "tests.restart_driver"], cwd=ROOT,
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert driver.stdout is not None and driver.stdin is not None
            assert driver.stdout.readline().strip() == "ready", pool.output
            cluster.restart()
            driver.stdin.write("go\n")
            driver.stdin.flush()
            report = json.loads(driver.stdout.readline())
            assert driver.wait(60) == 0
            # Running jobs: their backends were terminated by the shutdown (57P01).
            assert report["running"] == [[True, "error", "57P01"]] * 2
            # Queued after the restart: run by the same, reconnected pool.
            assert report["queued"] == [[True, 0], [True, 1], [True, 2]]
            assert pool.proc.poll() is None
            assert "reconnecting" in pool.output
        finally:
            driver.kill()
            assert pool.stop() == 0
