"""pgbackground benchmark: what a job costs next to running the same SQL directly.

    python bench/run.py [--quick] [--json PATH] [--database-url URL] [--only GROUPS]

Creates the database ``pgbackground_bench`` (dropped first if it exists, dropped again at the
end unless ``--keep-db``; ``--database-url`` uses an existing database instead), migrates it,
starts a real ``manage.py runworkers --concurrency 2`` against it, measures, stops the pool with
SIGTERM and prints one table: metric, pgbackground, baseline (the same SQL over psycopg on one
connection, in this process and run), ratio. Everything, with the machine's facts, goes to a
JSON file (default bench/results/latest.json). Exit status 1 if any job failed or the pool did
not stop cleanly; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import (
    DEFAULT_SERVER_URL,
    ROOT,
    BenchFailure,
    PoolProcess,
    clock_offset,
    close_django_connections,
    drop_database,
    machine_facts,
    profiled,
    recreate_database,
    server_is_local,
    setup_django,
    watchdog,
)
from metrics import FULL, GROUPS, QUICK, Context, Metric

DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark pgbackground against the same SQL run directly over psycopg.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: a smoke run that finishes in well under a minute")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                   help=f"where to write the results (default: {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--database-url", metavar="URL",
                   help="use this existing database (migrated, never dropped) instead of"
                   " creating one")
    p.add_argument("--server-url", default=DEFAULT_SERVER_URL, metavar="URL",
                   help=f"server to create the bench database on (default: {DEFAULT_SERVER_URL})")
    p.add_argument("--db-name", default="pgbackground_bench",
                   help="name of the database to create (default: pgbackground_bench)")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    p.add_argument("--concurrency", type=int, default=2, metavar="N",
                   help="runworkers --concurrency (default: 2)")
    p.add_argument("--only", metavar="GROUPS",
                   help=f"comma-separated subset of: {', '.join(GROUPS)}")
    p.add_argument("--round-trips", type=int, metavar="N", help="SELECT 1 round trips measured")
    p.add_argument("--jobs", type=int, metavar="N", help="jobs of the throughput run")
    p.add_argument("--launch-threads", type=int, metavar="N",
                   help="threads launching the throughput jobs (default: 1)")
    p.add_argument("--jobs-threaded", type=int, metavar="N",
                   help="jobs of the two-thread throughput run (issue 6)")
    p.add_argument("--rows", type=int, metavar="N", help="rows of the big result")
    p.add_argument("--repeats", type=int, metavar="N", help="runs of the big result")
    p.add_argument("--claim-queue", type=int, metavar="N",
                   help="jobs queued for the deep-queue claim latency (issue 6: 100,000)")
    p.add_argument("--cancels", type=int, metavar="N", help="cancel/progress jobs measured")
    p.add_argument("--admin-jobs", type=int, metavar="N",
                   help="finished jobs added behind the admin job list (issue 6: 1,000,000)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="write a cProfile of the launcher and (with py-spy on PATH) the pool's"
                   " sampled stacks per group to DIR; the numbers then include the overhead")
    p.add_argument("--job-log-lines", action="store_true",
                   help="let the pool log a line per finished job (logger pgbackground.jobs at"
                   " INFO, the demo's default); by default the bench keeps only failed jobs'"
                   " lines, as a deployment running many short jobs would: the formatting and"
                   " writing costs the pool about 0.08 ms a job")
    p.add_argument("--timeout", type=float, default=900.0, metavar="S",
                   help="cancel everything and fail if the run takes longer (default: 900)")
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(GROUPS)
        if unknown:
            p.error(f"unknown groups in --only: {', '.join(sorted(unknown))}")
    return args


def sizes_for(args: argparse.Namespace) -> Any:
    sizes = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in ("round_trips", "jobs", "launch_threads", "jobs_threaded", "rows", "repeats",
                     "cancels", "claim_queue", "admin_jobs")
        if getattr(args, name) is not None
    }
    for name, value in overrides.items():
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    return dataclasses.replace(sizes, **overrides)


# --- output --------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(metrics: list[Metric]) -> str:
    head = ("metric", "unit", "pgbackground", "baseline", "pgb/baseline")
    rows = [
        (m.label, m.unit, _fmt(m.value), _fmt(m.baseline),
         "-" if m.ratio is None else f"{m.ratio:.2f}x")
        for m in metrics
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    ) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = sorted({m.baseline_note for m in metrics})
    return "\n".join(lines) + "\nbaselines: " + "; ".join(notes)


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


# --- the run -------------------------------------------------------------------------------------


def run_groups(ctx: Context, names: list[str], metrics: list[Metric], failures: list[str],
               fired: Any, profile_dir: Path | None = None) -> None:
    """Run the groups, appending to ``metrics`` (kept if interrupted) and ``failures``."""
    for name in names:
        t0 = time.perf_counter()
        try:
            with profiled(profile_dir, name, ctx.pool.pid):
                metrics.extend(GROUPS[name](ctx))
        except Exception as exc:
            from pgbackground import BackgroundError

            kind = "job failed" if isinstance(exc, BackgroundError) else type(exc).__name__
            failures.append(f"{name}: {kind}: {exc}")
            log(f"{name} FAILED: {kind}: {exc}")
            if fired():
                failures.append(f"watchdog: {fired()}")
                break
        else:
            log(f"{name} done in {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args)
    names = args.only.split(",") if args.only else list(GROUPS)
    report: dict[str, Any] = {
        "schema": 1, "mode": "quick" if args.quick else "full",
        "config": {**dataclasses.asdict(sizes), "concurrency": args.concurrency,
                   "profiled": args.profile is not None},
        "machine": {}, "metrics": {}, "failures": [], "ok": False,
    }
    failures: list[str] = report["failures"]
    metrics: list[Metric] = []
    created = False
    pool: PoolProcess | None = None
    direct: psycopg.Connection[Any] | None = None
    status = 1
    started = time.perf_counter()
    try:
        if args.database_url:
            url = args.database_url
        else:
            log(f"creating database {args.db_name}")
            url = recreate_database(args.server_url, args.db_name)
            created = True
        setup_django(url)
        direct = psycopg.connect(url, autocommit=True)
        report["machine"] = machine_facts(direct)
        job_log_level = "INFO" if args.job_log_lines else "WARNING"
        log(f"starting runworkers --concurrency {args.concurrency}"
            f" (per-job log lines: {'on' if args.job_log_lines else 'failed jobs only'})")
        pool = PoolProcess(url, args.concurrency,
                           env={"PGBACKGROUND_JOBS_LOG_LEVEL": job_log_level})
        report["config"]["pool_job_log_level"] = job_log_level
        pool.wait_running()
        report["config"]["pool_pid"] = pool.pid
        ctx = Context(url=url, pool=pool, direct=direct, sizes=sizes,
                      concurrency=args.concurrency, log=log,
                      # One machine, one clock: estimating an offset would only add noise.
                      clock_offset=0.0 if server_is_local(direct) else clock_offset(direct))
        with watchdog(pool, args.timeout) as fired:
            run_groups(ctx, names, metrics, failures, fired, args.profile)
        log("stopping the pool (SIGTERM)")
        rc = pool.stop()
        if rc != 0:
            failures.append(f"runworkers exited with status {rc} after SIGTERM:\n"
                            + pool.output())
        status = 1 if failures else 0
    except KeyboardInterrupt:
        failures.append("interrupted")
        status = 130
    except (BenchFailure, psycopg.Error) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        status = 1
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close()
        if direct is not None:
            direct.close()
        with contextlib.suppress(Exception):
            close_django_connections()
        if created and not args.keep_db:
            try:
                drop_database(args.server_url, args.db_name)
            except psycopg.Error as exc:
                log(f"could not drop database {args.db_name}: {exc}")

    report["metrics"] = {m.key: m.as_json() for m in metrics}
    report["elapsed_s"] = time.perf_counter() - started
    if report["machine"]:
        report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["ok"] = status == 0
    write_json(args.json, report)
    if metrics:
        print(table(metrics))
    m = report["machine"]
    if m:
        print(f"machine: {m['nproc']} CPU ({m['cpu_model']}), PostgreSQL {m['postgresql']},"
              f" Python {m['python']}, psycopg {m['psycopg']} ({m['psycopg_impl']}),"
              f" {m['date']}; {report['mode']} run in {report['elapsed_s']:.0f} s;"
              f" load average {m['loadavg_at_start'][0]:.2f} at start,"
              f" {m['loadavg_at_end'][0]:.2f} at end")
    print(f"results: {args.json}")
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
