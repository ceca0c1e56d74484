"""``bench/run.py --quick`` runs end to end and reports every metric (behaviour, never timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.poolproc import database_url

ROOT = Path(__file__).resolve().parent.parent

METRICS = {
    "roundtrip_median_ms",
    "roundtrip_p95_ms",
    "throughput_jobs_per_s",
    "throughput_2threads_jobs_per_s",
    "big_result_s",
    "launcher_peak_rss_mb",
    "worker_peak_rss_mb",
    "launcher_stream_peak_rss_mb",
    "cancel_median_ms",
    "progress_median_ms",
    "claim_deep_queue_median_ms",
    "drain_jobs_per_s",
    "big_sql_s",
    "roundtrip_nocache_median_ms",
    "throughput_2threads_nocache_jobs_per_s",
    *(f"admin_{page}_median_ms"
      for page in ("list", "failed", "label", "sqlstate", "day", "page", "finished", "text",
                   "nomatch", "sorted", "stats")),
}


@pytest.mark.pool
def test_quick_benchmark_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # The same server as the tests; a database of our own so a developer's bench run is safe.
    server = urlunsplit(urlsplit(database_url())._replace(path="/postgres"))
    db_name = "pgbackground_bench_" + os.environ.get("TEST_DATABASE_NAME", "test")[:40]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out),
         "--server-url", server, "--db-name", db_name],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["failures"] == []
    assert set(report["metrics"]) == METRICS
    for key, metric in report["metrics"].items():
        for field in ("value", "baseline", "ratio"):
            assert isinstance(metric[field], int | float), (key, field, metric)
            assert metric[field] > 0, (key, field, metric)
    machine = report["machine"]
    assert machine["nproc"] >= 1
    for fact in ("postgresql", "python", "date", "psycopg", "django"):
        assert machine[fact], fact
    # The table is printed with every metric's label.
    for metric in report["metrics"].values():
        assert metric["label"] in proc.stdout


@pytest.mark.pool
def test_bench_database_is_dropped_afterwards(tmp_path: Path) -> None:
    """The run cleans up: its pool is gone and its database dropped (no --keep-db)."""
    import psycopg

    server = urlunsplit(urlsplit(database_url())._replace(path="/postgres"))
    db_name = "pgbackground_bench_drop_" + os.environ.get("TEST_DATABASE_NAME", "test")[:35]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "roundtrip",
         "--round-trips", "3", "--json", str(tmp_path / "b.json"),
         "--server-url", server, "--db-name", db_name],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["metrics"]) == {"roundtrip_median_ms", "roundtrip_p95_ms"}
    with psycopg.connect(server, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            [db_name]).fetchone()
    assert left == (0,)
    pid = report["config"]["pool_pid"]
    assert not Path(f"/proc/{pid}").exists() or "runworkers" not in Path(
        f"/proc/{pid}/cmdline").read_text()


@pytest.mark.pool
def test_the_paired_ab_tool_compares_two_checkouts() -> None:
    """``bench/ab.py REV`` (a git revision: a temporary worktree) runs both sides and reports
    the three paired metrics; the worktree and both databases are gone after."""
    server = urlunsplit(urlsplit(database_url())._replace(path="/postgres"))
    db_name = "pgbackground_ab_" + os.environ.get("TEST_DATABASE_NAME", "test")[:40]

    def worktrees() -> str:
        return subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout

    before = worktrees()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab.py"), "HEAD", "--rounds", "1", "--quick",
         "--server-url", server, "--db-name", db_name],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "this checkout vs HEAD, 1 paired rounds"
    assert [line.split(" other ")[0].strip() for line in lines[1:]] == [
        "launch()+result() SELECT 1, median ms",
        "jobs/s, 200 x SELECT 1, 2 launching threads",
        "jobs/s, 100 x SELECT 1, 1 launching thread",
    ]
    for line in lines[1:]:
        ratio = float(line.split("this/other median ")[1].split()[0])
        assert ratio > 0, line
    assert worktrees() == before
    with psycopg.connect(server, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname IN (%s, %s)",
            [f"{db_name}_a", f"{db_name}_b"],
        ).fetchall()
    assert left == []
