"""The measurements. Each one runs the same SQL through pgbackground and directly over psycopg
(one connection, this process, same run) and returns :class:`Metric` rows.

To add a metric (issue 6's list), write a function ``measure_x(ctx) -> list[Metric]`` and add it
to :data:`GROUPS`; ``run.py`` prints, checks and stores whatever the groups return.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from harness import (
    BenchFailure,
    CpuMeter,
    PoolProcess,
    peak_rss_mb,
    release_memory,
    reset_peak_rss,
    rss_mb,
)

BIG_SQL = "SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
# Progress is reported with the job's own clock, then the job sleeps until canceled.
PROGRESS_SQL = (
    "SELECT pgbackground_progress(50, extract(epoch FROM clock_timestamp())::text);"
    " SELECT pg_sleep(600)"
)
# The direct twin: a notice carrying the server's clock, then the same sleep.
DIRECT_PROGRESS_SQL = (
    "DO $$ BEGIN RAISE NOTICE '%', extract(epoch FROM clock_timestamp());"
    " PERFORM pg_sleep(600); END $$"
)
EVENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    round_trips: int
    warmup: int
    jobs: int
    launch_threads: int
    jobs_threaded: int  # issue 6: this many jobs launched from two threads
    rows: int
    repeats: int  # of the big result (time: median; memory: max)
    cancels: int
    claims: int  # claims timed, from a deep queue and from a queue of one
    claim_queue: int  # jobs queued for the deep-queue claims
    big_sql_rows: int  # rows of the INSERT of the big SQL script
    admin_jobs: int  # job rows behind the admin job list
    admin_requests: int  # requests of each admin page timed


FULL = Sizes(round_trips=300, warmup=30, jobs=2000, launch_threads=1, jobs_threaded=5000,
             rows=1_000_000, repeats=3, cancels=30, claims=2000, claim_queue=100_000,
             big_sql_rows=100_000, admin_jobs=1_000_000, admin_requests=15)
QUICK = Sizes(round_trips=30, warmup=5, jobs=200, launch_threads=1, jobs_threaded=200,
              rows=100_000, repeats=1, cancels=5, claims=50, claim_queue=5_000,
              big_sql_rows=2_000, admin_jobs=5_000, admin_requests=3)


@dataclass
class Metric:
    key: str  # stable JSON key
    label: str  # what the table says
    unit: str
    value: float
    baseline: float | None
    baseline_note: str = "direct psycopg, one connection"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "unit": self.unit, "value": self.value,
            "baseline": self.baseline, "baseline_note": self.baseline_note,
            "ratio": self.ratio, "details": self.details,
        }


@dataclass
class Context:
    url: str
    pool: PoolProcess
    direct: psycopg.Connection[Any]  # the baseline's one connection
    sizes: Sizes
    concurrency: int  # slots of the pool
    clock_offset: float  # server clock - time.time()
    log: Callable[[str], None]


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values), "median": statistics.median(values), "p95": percentile(values, 95),
        "min": min(values), "max": max(values), "mean": statistics.fmean(values),
    }


_TIMELINE_SQL = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
       avg(extract(epoch FROM started_at - created_at))::float8,
       avg(extract(epoch FROM finished_at - started_at))::float8,
       extract(epoch FROM max(finished_at) - min(created_at))::float8
FROM pgbackground_job WHERE id = ANY(%s)
"""


def job_timeline(ctx: Context, ids: list[int]) -> dict[str, float]:
    """Server-side times of the jobs: queued (launch INSERT -> claim) and run (claim -> outcome
    recorded), in ms, and the span from the first launch to the last outcome, in s."""
    med_q, med_r, avg_q, avg_r, span = ctx.direct.execute(
        _TIMELINE_SQL, [ids]).fetchone()  # type: ignore[misc]
    return {"median_queued_ms": _ms(med_q), "median_run_ms": _ms(med_r),
            "avg_queued_ms": _ms(avg_q), "avg_run_ms": _ms(avg_r), "span_s": span}


def _per_job_cpu(cpu: dict[str, float], jobs: int, elapsed: float) -> dict[str, Any]:
    """CPU per job by process (and PostgreSQL backend), and how busy the machine's CPUs were
    with it (the rest: waiting, or other processes)."""
    total = sum(v for k, v in cpu.items() if k in ("launcher", "pool", "postgres"))
    return {
        "cpu_ms_per_job": {k: _ms(v) / jobs for k, v in cpu.items()},
        "cpu_busy_fraction_of_all_cpus": total / elapsed / (os.cpu_count() or 1),
    }


# --- launch() + result() of SELECT 1 -------------------------------------------------------------


def measure_round_trip(ctx: Context) -> list[Metric]:
    import pgbackground as pgb

    n, warm = ctx.sizes.round_trips, ctx.sizes.warmup
    ctx.log(f"round trip: {warm} + {n} x launch()+result() of SELECT 1")
    ours: list[float] = []
    ids: list[int] = []
    cpu = CpuMeter(ctx.direct, ctx.pool.pid)
    t_start = 0.0
    for i in range(warm + n):
        if i == warm:
            cpu.start()
            t_start = time.perf_counter()
        t0 = time.perf_counter()
        h = pgb.launch("SELECT 1")
        rows = h.result().rows
        t1 = time.perf_counter()
        if rows != [(1,)]:
            raise BenchFailure(f"SELECT 1 returned {rows!r}")
        if i >= warm:
            ours.append(_ms(t1 - t0))
            ids.append(h.id)
    used = cpu.stop()
    elapsed = time.perf_counter() - t_start
    direct: list[float] = []
    for i in range(warm + n):
        t0 = time.perf_counter()
        rows = ctx.direct.execute("SELECT 1").fetchall()
        t1 = time.perf_counter()
        if i >= warm:
            direct.append(_ms(t1 - t0))
    mine, base = _summary(ours), _summary(direct)
    return [
        Metric("roundtrip_median_ms", "launch()+result() SELECT 1, median", "ms",
               mine["median"], base["median"],
               details={"pgbackground": mine, "direct": base,
                        "server_timeline": job_timeline(ctx, ids),
                        **_per_job_cpu(used, n, elapsed)}),
        Metric("roundtrip_p95_ms", "launch()+result() SELECT 1, p95", "ms",
               mine["p95"], base["p95"]),
    ]


# --- throughput ----------------------------------------------------------------------------------


def _launch_and_wait(n: int) -> tuple[list[int], float, float]:
    """Launch ``n`` SELECT 1 jobs, then wait for each: (ids, launched_at, done_at)."""
    import pgbackground as pgb

    handles = [pgb.launch("SELECT 1") for _ in range(n)]
    launched = time.perf_counter()
    for h in handles:
        h.wait()
    return [h.id for h in handles], launched, time.perf_counter()


def _connect_launcher() -> None:
    """Open this thread's connections (Django's and pgbackground's launcher connection)."""
    from django.db import connections

    from pgbackground.db import launcher_connection, models_alias

    launcher_connection()
    connections[models_alias()].ensure_connection()


def _in_thread(n: int, ready: threading.Barrier, go: threading.Event,
               release: threading.Event, out: queue.Queue[Any]) -> None:
    """One launching thread. Its connections are opened before the start and closed only after
    the CPU meter has read their backends."""
    from django.db import connections

    from pgbackground.db import discard_launcher_connection

    try:
        _connect_launcher()
        ready.wait()
        go.wait()
        out.put(_launch_and_wait(n))
    except BaseException as exc:
        ready.abort()
        out.put(exc)
    finally:
        release.wait(EVENT_TIMEOUT)
        discard_launcher_connection()
        connections.close_all()


def measure_throughput(ctx: Context, jobs: int | None = None,
                       threads: int | None = None) -> list[Metric]:
    """Launch all jobs (from ``threads`` threads), then wait for all; jobs per second."""
    jobs = jobs or ctx.sizes.jobs
    threads = threads or ctx.sizes.launch_threads
    ctx.log(f"throughput: {jobs} x SELECT 1 launched from {threads} thread(s), then waited for")
    cpu = CpuMeter(ctx.direct, ctx.pool.pid)
    if threads == 1:
        _connect_launcher()  # so that the meter sees its backends from the start
        cpu.start()
        t0 = time.perf_counter()
        ids, launched, done = _launch_and_wait(jobs)
        used = cpu.stop()
    else:
        share = [jobs // threads + (1 if i < jobs % threads else 0) for i in range(threads)]
        ready, go, release = threading.Barrier(threads + 1), threading.Event(), threading.Event()
        out: queue.Queue[Any] = queue.Queue()
        workers = [threading.Thread(target=_in_thread, args=(k, ready, go, release, out),
                                    daemon=True) for k in share]
        for w in workers:
            w.start()
        try:
            ready.wait()
            cpu.start()
            t0 = time.perf_counter()
            go.set()
            parts = [out.get() for _ in workers]
            used = cpu.stop()
        except threading.BrokenBarrierError:  # a thread failed to connect: its error follows
            parts = [out.get() for _ in workers]
        finally:
            go.set()
            release.set()
            for w in workers:
                w.join()
        errors = [p for p in parts if isinstance(p, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                       errors[0])
        ids = [i for p in parts for i in p[0]]
        launched, done = max(p[1] for p in parts), max(p[2] for p in parts)
    elapsed = done - t0

    states = dict(ctx.direct.execute(
        "SELECT state, count(*) FROM pgbackground_job WHERE id = ANY(%s) GROUP BY state", [ids]
    ).fetchall())
    if states != {"stopped": jobs}:
        raise BenchFailure(f"throughput jobs did not all stop: {states}")

    t1 = time.perf_counter()
    for _ in range(jobs):
        ctx.direct.execute("SELECT 1").fetchall()
    direct_s = time.perf_counter() - t1

    key = "throughput_jobs_per_s" if threads == 1 else f"throughput_{threads}threads_jobs_per_s"
    label = f"jobs/s, {jobs:,} x SELECT 1, --concurrency {ctx.concurrency}"
    if threads > 1:
        label += f", {threads} launching threads"
    return [Metric(
        key, label, "jobs/s", jobs / elapsed, jobs / direct_s,
        details={
            "jobs": jobs, "launch_threads": threads, "elapsed_s": elapsed,
            "launch_phase_s": launched - t0, "wait_phase_s": done - launched,
            "launches_per_s": jobs / (launched - t0),
            "server_timeline": job_timeline(ctx, ids), **_per_job_cpu(used, jobs, elapsed),
            "direct_elapsed_s": direct_s,
        },
    )]


# --- a big result --------------------------------------------------------------------------------


def _one_big_result(ctx: Context, rows: int) -> dict[str, Any]:
    import pgbackground as pgb

    me, worker = os.getpid(), ctx.pool.pid
    query = BIG_SQL.format(rows=rows)

    release_memory()
    reset_peak_rss(me)
    direct_start = rss_mb(me)
    t0 = time.perf_counter()
    cur = ctx.direct.execute(query)
    direct_exec_s = time.perf_counter() - t0
    data = cur.fetchall()
    direct_s = time.perf_counter() - t0
    direct_peak = peak_rss_mb(me)
    if len(data) != rows:
        raise BenchFailure(f"direct query returned {len(data)} rows, not {rows}")
    first, last = data[0], data[-1]
    del data, cur
    release_memory()

    launcher_start, worker_idle = rss_mb(me), rss_mb(worker)
    reset_peak_rss(me)
    reset_peak_rss(worker)
    cpu = CpuMeter(ctx.direct, worker)
    cpu.start()
    t0 = time.perf_counter()
    h = pgb.launch(query, label="bench big result")
    result = h.result()
    t_result = time.perf_counter()
    data = result.rows
    ours_s = time.perf_counter() - t0
    used = cpu.stop()
    launcher_peak, worker_peak = peak_rss_mb(me), peak_rss_mb(worker)
    if len(data) != rows or data[0] != first or data[-1] != last:
        raise BenchFailure(f"pgbackground returned {len(data)} rows (first {data[:1]!r}),"
                           f" not {rows} (first {first!r})")
    del data, result
    release_memory()
    queued, run = ctx.direct.execute(
        "SELECT extract(epoch FROM started_at - created_at)::float8,"
        " extract(epoch FROM finished_at - started_at)::float8"
        " FROM pgbackground_job WHERE id = %s", [h.id]
    ).fetchone()  # type: ignore[misc]
    return {
        "direct_s": direct_s, "ours_s": ours_s,
        "direct_execute_s": direct_exec_s, "direct_fetchall_s": direct_s - direct_exec_s,
        "launch_to_result_s": t_result - t0, "rows_load_s": ours_s - (t_result - t0),
        "job_queued_s": queued, "job_run_s": run,
        "direct_start_mb": direct_start, "direct_peak_mb": direct_peak,
        "launcher_start_mb": launcher_start, "launcher_peak_mb": launcher_peak,
        "worker_idle_mb": worker_idle, "worker_peak_mb": worker_peak,
        "cpu_s": used,
    }


def _streamed_result(ctx: Context, rows: int) -> dict[str, Any]:
    """Iterate the result instead of keeping it (``for row in h.result()``), against a direct
    server-side cursor: memory should stay flat whatever the row count."""
    import pgbackground as pgb

    me = os.getpid()
    query = BIG_SQL.format(rows=rows)
    release_memory()
    reset_peak_rss(me)
    start = rss_mb(me)
    t0 = time.perf_counter()
    with ctx.direct.transaction(), ctx.direct.cursor(name="bench_stream") as cur:
        cur.itersize = 2000
        direct_n = sum(1 for _ in cur.execute(query))
    direct_s = time.perf_counter() - t0
    direct_peak = peak_rss_mb(me)
    release_memory()
    reset_peak_rss(me)
    t0 = time.perf_counter()
    ours_n = sum(1 for _ in pgb.launch(query, label="bench streamed result").result())
    ours_s = time.perf_counter() - t0
    peak = peak_rss_mb(me)
    if direct_n != rows or ours_n != rows:
        raise BenchFailure(f"streamed {ours_n} rows (direct {direct_n}), not {rows}")
    return {"start_mb": start, "peak_mb": peak, "direct_peak_mb": direct_peak,
            "ours_s": ours_s, "direct_s": direct_s}


def measure_big_result(ctx: Context, rows: int | None = None) -> list[Metric]:
    rows = rows or ctx.sizes.rows
    runs: list[dict[str, Any]] = []
    for i in range(ctx.sizes.repeats):
        ctx.log(f"big result: {rows:,} rows, run {i + 1}/{ctx.sizes.repeats}")
        runs.append(_one_big_result(ctx, rows))
    ctx.log(f"big result: {rows:,} rows, iterated")
    streamed = _streamed_result(ctx, rows)

    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)

    def top(k: str) -> float:
        return max(r[k] for r in runs)

    def low(k: str) -> float:
        return min(r[k] for r in runs)

    return [
        Metric("big_result_s", f"{rows:,}-row result via result().rows", "s",
               med("ours_s"), med("direct_s"), baseline_note="direct execute()+fetchall()",
               details={"rows": rows, "runs": runs}),
        Metric("launcher_peak_rss_mb", f"launcher peak RSS, {rows:,}-row result", "MB",
               top("launcher_peak_mb"), top("direct_peak_mb"),
               baseline_note="this process during the direct fetchall()"),
        Metric("worker_peak_rss_mb", f"worker peak RSS, {rows:,}-row result", "MB",
               top("worker_peak_mb"), low("worker_idle_mb"),
               baseline_note="the same pool process, idle, before the job"),
        Metric("launcher_stream_peak_rss_mb",
               f"launcher peak RSS, {rows:,} rows iterated (not kept)", "MB",
               streamed["peak_mb"], streamed["direct_peak_mb"],
               baseline_note="a direct server-side cursor (itersize 2000)", details=streamed),
    ]


# --- cancel and progress -------------------------------------------------------------------------


def _await_event(listener: psycopg.Connection[Any], job_id: int,
                 accept: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        for n in listener.notifies(timeout=left, stop_after=1):
            data = json.loads(n.payload)
            if data.get("id") == job_id and accept(data):
                return
    raise BenchFailure(f"no event for job {job_id} within {EVENT_TIMEOUT:.0f} s")


def _direct_cancel_progress(ctx: Context, n: int) -> tuple[list[float], list[float]]:
    """The floor: a notice's transit time, and cancel_safe() until the statement errors out."""
    conn = psycopg.connect(ctx.url, autocommit=True)
    notices: queue.Queue[tuple[float, str]] = queue.Queue()
    conn.add_notice_handler(lambda d: notices.put((time.time(), d.message_primary or "")))
    progress: list[float] = []
    cancel: list[float] = []

    def run(out: queue.Queue[Any]) -> None:
        try:
            conn.execute(DIRECT_PROGRESS_SQL)
            out.put(BenchFailure("the direct pg_sleep was not canceled"))
        except psycopg.errors.QueryCanceled:
            out.put(time.perf_counter())
        except BaseException as exc:
            out.put(exc)

    try:
        for _ in range(n):
            done: queue.Queue[Any] = queue.Queue()
            th = threading.Thread(target=run, args=(done,), daemon=True)
            th.start()
            seen, stamp = notices.get(timeout=EVENT_TIMEOUT)
            progress.append(_ms(seen + ctx.clock_offset - float(stamp)))
            t0 = time.perf_counter()
            conn.cancel_safe()
            t1 = done.get(timeout=EVENT_TIMEOUT)
            th.join()
            if isinstance(t1, BaseException):
                raise t1
            cancel.append(_ms(t1 - t0))
    finally:
        conn.close()
    return progress, cancel


def measure_cancel_progress(ctx: Context) -> list[Metric]:
    """Per job: progress reported by the SQL → seen by ``h.progress()`` (after its event), then
    ``cancel()`` of the running pg_sleep → ``wait()`` returned."""
    import pgbackground as pgb

    n, warm = ctx.sizes.cancels, 2
    ctx.log(f"cancel/progress: {warm} + {n} jobs")
    listener = psycopg.connect(ctx.url, autocommit=True)
    progress: list[float] = []
    cancel: list[float] = []
    cancel_only: list[float] = []
    ids: list[int] = []
    try:
        listener.execute("LISTEN pgbackground_events")
        for i in range(warm + n):
            h = pgb.launch(PROGRESS_SQL, label="bench cancel/progress")
            _await_event(listener, h.id, lambda d: d.get("pct") is not None)
            p = h.progress()
            seen = time.time()
            if p is None:
                raise BenchFailure(f"job {h.id}: event said progress, h.progress() is None")
            t0 = time.perf_counter()
            h.cancel()
            t1 = time.perf_counter()
            h.wait()
            t2 = time.perf_counter()
            state = h.state
            if state != "canceled":
                raise BenchFailure(f"job {h.id} ended {state!r} after cancel(), not 'canceled'")
            if i >= warm:
                progress.append(_ms(seen + ctx.clock_offset - float(p.message)))
                cancel.append(_ms(t2 - t0))
                cancel_only.append(_ms(t1 - t0))
                ids.append(h.id)
    finally:
        listener.close()
    # Server side: the cancel statement -> the outcome recorded by the worker.
    (recorded_ms,) = ctx.direct.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY"
        " extract(epoch FROM finished_at - cancel_requested_at)) * 1000"
        " FROM pgbackground_job WHERE id = ANY(%s)", [ids]).fetchone()  # type: ignore[misc]
    d_progress, d_cancel = _direct_cancel_progress(ctx, n)
    return [
        Metric("cancel_median_ms", "cancel() -> wait() returned, median", "ms",
               statistics.median(cancel), statistics.median(d_cancel),
               baseline_note="cancel_safe() of a direct pg_sleep until it errors",
               details={"pgbackground": _summary(cancel), "cancel_call": _summary(cancel_only),
                        "median_cancel_statement_to_outcome_recorded_ms": recorded_ms,
                        "direct": _summary(d_cancel)}),
        Metric("progress_median_ms", "pgbackground_progress() -> h.progress(), median", "ms",
               statistics.median(progress), statistics.median(d_progress),
               baseline_note="a RAISE NOTICE reaching a direct client",
               details={"pgbackground": _summary(progress), "direct": _summary(d_progress),
                        "clock_offset_s": ctx.clock_offset}),
    ]


def measure_throughput_threads(ctx: Context) -> list[Metric]:
    """Issue 6's variant: more jobs, launched from two threads."""
    return measure_throughput(ctx, jobs=ctx.sizes.jobs_threaded, threads=2)


# --- a large SQL string -------------------------------------------------------------------------


def measure_big_sql(ctx: Context) -> list[Metric]:
    """launch() + wait() of a multi-megabyte SQL script (one INSERT of many rows into a temporary
    table) vs the same script run directly: what handling the text costs (validation, the
    COPY check, storing and reading it), next to PostgreSQL's own parse and run."""
    import pgbackground as pgb

    rows = ctx.sizes.big_sql_rows
    script = ("CREATE TEMP TABLE bench_big_sql (n int, t text, x float8, z text);"
              " INSERT INTO bench_big_sql VALUES "
              + ", ".join(f"({i}, 'value {i}', 3.5, NULL)" for i in range(rows)) + ";")
    ctx.log(f"big SQL: a {len(script) / 1e6:.1f} MB script, launched vs run directly")
    ours, direct = [], []
    for _ in range(ctx.sizes.repeats):
        t0 = time.perf_counter()
        h = pgb.launch(script)
        if not h.wait(EVENT_TIMEOUT) or h.state != "stopped":
            raise BenchFailure(f"the big SQL job ended {h.state}")
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ctx.direct.execute(script.encode())
        direct.append(time.perf_counter() - t0)
        ctx.direct.execute("DROP TABLE bench_big_sql")
    mine, base = statistics.median(ours), statistics.median(direct)
    return [Metric("big_sql_s", f"launch()+wait() of a {len(script) / 1e6:.1f} MB SQL script",
                   "s", mine, base, baseline_note="the same script run directly",
                   details={"chars": len(script), "ours": ours, "direct": direct})]


# --- the pool alone: a queue filled beforehand ---------------------------------------------------


def measure_drain(ctx: Context) -> list[Metric]:
    """How fast the pool empties a queue filled by one INSERT (no launcher competing for the
    CPUs): jobs per second from the first claim to the last outcome (server clock)."""
    import pgbackground as pgb
    from pgbackground.events import QUEUE_CHANNEL

    n = ctx.sizes.jobs_threaded
    ctx.log(f"drain: {n} x SELECT 1 queued by one INSERT, run by the pool alone")
    with psycopg.connect(ctx.url, autocommit=True) as conn:
        with conn.transaction():
            rows = conn.execute(
                "INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes,"
                " notices) SELECT g, 'SELECT 1', current_user, '{}', 1048576, '[]'"
                " FROM generate_series(1, %s) g RETURNING id, cookie", [n]).fetchall()
            for slot in range(ctx.concurrency):  # one wake-up per slot (payloads differ)
                conn.execute("SELECT pg_notify(%s, %s)", [QUEUE_CHANNEL, f"bench {slot}"])
        # Wait without competing for the CPUs: for the last job, then for any still unfinished.
        cookies = dict(rows)
        pending = [max(cookies)]
        while pending:
            for job_id in pending:
                if not pgb.Handle(job_id, cookies[job_id]).wait(EVENT_TIMEOUT):
                    raise BenchFailure(f"job {job_id} of the drained queue did not finish")
            pending = [r[0] for r in conn.execute(
                "SELECT id FROM pgbackground_job WHERE id = ANY(%s)"
                " AND state IN ('queued', 'running')", [list(cookies)]).fetchall()]
        span, states = conn.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8,"
            " array_agg(DISTINCT state::text) FROM pgbackground_job WHERE id = ANY(%s)",
            [[r[0] for r in rows]]).fetchone()  # type: ignore[misc]
    if states != ["stopped"]:
        raise BenchFailure(f"drained jobs ended {states}")
    t0 = time.perf_counter()
    for _ in range(n):
        ctx.direct.execute("SELECT 1").fetchall()
    direct = time.perf_counter() - t0
    return [Metric("drain_jobs_per_s",
                   f"jobs/s, {n:,} x SELECT 1 queued beforehand, --concurrency {ctx.concurrency}",
                   "jobs/s", n / span, n / direct,
                   details={"jobs": n, "span_s": span, "direct_elapsed_s": direct})]


# --- the same reading pg_settings on every launch ---------------------------------------------


def measure_without_settings_cache(ctx: Context) -> list[Metric]:
    """The round trip and the two-thread throughput with PGBACKGROUND["CACHE_SESSION_SETTINGS"]
    off: every launch reads the launcher's settings from pg_settings (what the cache saves)."""
    from django.test import override_settings

    ctx.log("reading pg_settings on every launch (CACHE_SESSION_SETTINGS = False):")
    with override_settings(PGBACKGROUND={"CACHE_SESSION_SETTINGS": False}):
        found = measure_round_trip(ctx)[:1] + measure_throughput_threads(ctx)
    renamed = []
    for m in found:
        key = m.key.replace("roundtrip_", "roundtrip_nocache_").replace(
            "throughput_2threads_", "throughput_2threads_nocache_")
        renamed.append(Metric(key, m.label + ", pg_settings read by every launch", m.unit,
                              m.value, m.baseline, m.baseline_note, m.details))
    return renamed


# --- claim latency with a deep queue --------------------------------------------------------------

_CLAIM_SCHEMA = "pgbackground_bench_claim"


def _claim_once(conn: psycopg.Connection[Any], worker_id: int, after: int) -> tuple[float, int]:
    """One claim as a slot runs it (``after``: its previous claim, 0: from the head of the
    queue): the time, the job id."""
    from pgbackground.pool import _CLAIM

    t0 = time.perf_counter()
    rows = _CLAIM.run(conn, {"worker": worker_id, "pid": 0, "after": after})
    elapsed = time.perf_counter() - t0
    if not rows:
        raise BenchFailure("the claim found no queued job")
    return elapsed, int(rows[0][0])


def measure_claim(ctx: Context) -> list[Metric]:
    """The pool's own claim statement on a queue of ``claim_queue`` jobs vs a queue of one.

    It runs in a schema of its own (the same tables and indexes, copied), on a connection of
    this process, so that the running pool cannot take the jobs: each claim is timed alone, in
    a row of successive claims from the deep queue (their dead index entries included, as a
    draining pool leaves them)."""
    n, depth = ctx.sizes.claims, ctx.sizes.claim_queue
    ctx.log(f"claim: {n} claims from a queue of {depth:,} jobs vs from a queue of one")
    with psycopg.connect(ctx.url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {_CLAIM_SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {_CLAIM_SCHEMA}")
        for table in ("pgbackground_job", "pgbackground_worker"):
            conn.execute(f"CREATE TABLE {_CLAIM_SCHEMA}.{table}"
                         f" (LIKE public.{table} INCLUDING ALL)")
        conn.execute(f"SET search_path = {_CLAIM_SCHEMA}")
        worker = conn.execute(
            "INSERT INTO pgbackground_worker (name, hostname, pid, concurrency)"
            " VALUES ('bench claim', 'bench', 0, 1) RETURNING id").fetchone()
        assert worker is not None
        insert = ("INSERT INTO pgbackground_job (cookie, sql, role, gucs, max_result_bytes,"
                  " notices) SELECT 1, 'SELECT 1', 'bench', '{}', 0, '[]'"
                  " FROM generate_series(1, %s)")
        try:
            shallow: list[float] = []
            last = 0
            for i in range(n + 20):
                conn.execute(insert, [1])
                t, last = _claim_once(conn, worker[0], last)
                if i >= 20:
                    shallow.append(_ms(t))
            conn.execute(insert, [depth])
            conn.execute("VACUUM ANALYZE pgbackground_job")
            deep: list[float] = []
            for _ in range(n):
                t, last = _claim_once(conn, worker[0], last)
                deep.append(_ms(t))
            # What the hint saves: the claim from the head of the queue (a slot's first, and
            # one in CLAIM_FROM_HEAD_EVERY) steps over the dead index entries of every claim
            # since the last VACUUM. Claim the rest of the queue without vacuuming, then time it.
            conn.execute("UPDATE pgbackground_job SET state = 'stopped' WHERE state = 'queued'")
            conn.execute(insert, [1])
            from_head = [_ms(_claim_once(conn, worker[0], 0)[0])]
            for _ in range(min(n, 20)):
                conn.execute(insert, [1])
                from_head.append(_ms(_claim_once(conn, worker[0], 0)[0]))
        finally:
            conn.execute(f"DROP SCHEMA {_CLAIM_SCHEMA} CASCADE")
    mine, base = _summary(deep), _summary(shallow)
    return [
        Metric("claim_deep_queue_median_ms",
               f"claim, {depth:,} queued jobs, median", "ms", mine["median"], base["median"],
               baseline_note="the same claim statement with one queued job",
               details={"deep": mine, "one_queued": base,
                        f"from_head_over_{depth}_dead_entries": _summary(from_head)}),
    ]


# --- the admin job list over a large table -----------------------------------------------------

# Finished jobs as a busy deployment leaves them: mostly stopped, some errors and cancels, labels
# and SQL that differ, one owner for a fifth of them, created over the last 90 days.
_ADMIN_FILL = """
INSERT INTO pgbackground_job (cookie, sql, label, owner_id, state, created_at, started_at,
    finished_at, role, gucs, max_result_bytes, notices, command_tag, row_count,
    error_sqlstate, error_message)
SELECT g, format('SELECT count(*) FROM sales WHERE region = %%s /* %%s */', g %% 17, md5(g::text)),
    CASE WHEN g %% 3 = 0 THEN '' ELSE 'report-' || (g %% 40) END,
    CASE WHEN g %% 5 = 0 THEN %(owner)s END,
    s.state, t.at, t.at + interval '1 second', t.at + interval '2 seconds', 'bench', '{}',
    1048576, '[]', CASE WHEN s.state = 'stopped' THEN 'SELECT 1' ELSE '' END,
    CASE WHEN s.state = 'stopped' THEN 1 END,
    CASE s.state WHEN 'error' THEN '22012' WHEN 'canceled' THEN '57014' ELSE '' END,
    CASE s.state WHEN 'error' THEN 'division by zero'
                 WHEN 'canceled' THEN 'canceling statement due to user request' ELSE '' END
FROM generate_series(1, %(n)s) g,
    LATERAL (SELECT CASE WHEN g %% 50 = 0 THEN 'error' WHEN g %% 97 = 0 THEN 'canceled'
                         ELSE 'stopped' END AS state) s,
    LATERAL (SELECT now() - interval '90 days' * (1 - g::float8 / %(n)s) AS at) t
"""

# (key, what the table says, query string or a page below the list's URL). The first is the
# issue's metric: the list as an operator opens it; the others are what they click next.
ADMIN_PAGES = [
    ("list", "admin job list", ""),
    ("failed", "admin job list, state filter 'Failed or canceled'", "state=failed"),
    ("label", "admin job list, label filter", "label=report-7"),
    ("sqlstate", "admin job list, search 'division_by_zero' (an SQLSTATE)", "q=division_by_zero"),
    ("day", "admin job list, one day of the date hierarchy", "created_at__year={y}"
     "&created_at__month={m}&created_at__day={d}"),
    ("page", "admin job list, page 100 (of a smaller table: its last)", "p={page}"),
    ("finished", "admin job list, finished this month (date filter)",
     "finished_at__gte={y}-{m:02d}-01T00:00:00%2B00:00"),
    ("text", "admin job list, free-text search of the SQL", "q=region+%3D+3"),
    ("nomatch", "admin job list, free-text search matching no job", "q=no+such+text"),
    ("sorted", "admin job list sorted by owner (a join, no index)", "o=-{owner_column}"),
    ("stats", "admin statistics page: stats() and the last 24 hours", "stats/"),
]


def _admin_page(client: Any, url: str, n: int) -> tuple[list[float], list[dict[str, Any]]]:
    """GET ``url`` ``n`` times in this process (the whole Django request: middleware, queries,
    template): the times in ms and the queries of the last request."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    queries: list[dict[str, Any]] = []
    for i in range(n + 1):  # the first warms the caches (templates, the planner's statistics)
        capture = CaptureQueriesContext(connection) if i == n else contextlib.nullcontext()
        with capture as captured:
            t0 = time.perf_counter()
            response = client.get(url)
            elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise BenchFailure(f"GET {url} answered {response.status_code}")
        if i:
            times.append(_ms(elapsed))
        if captured is not None:
            queries = [{"ms": float(q["time"]) * 1000, "sql": q["sql"]}
                       for q in captured.captured_queries]
    return times, queries


def measure_admin_list(ctx: Context) -> list[Metric]:
    """The admin's job list (server time: the whole request in this process, as the test client
    makes it) over ``admin_jobs`` finished jobs vs the same pages over the table as the other
    groups left it. The rows are deleted again at the end."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from pgbackground.admin.jobs import JobAdmin

    n, repeats = ctx.sizes.admin_jobs, ctx.sizes.admin_requests
    user_model = get_user_model()
    user, _ = user_model._default_manager.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    base_url = reverse("admin:pgbackground_job_changelist")
    # The admin's ``o`` counts the list's columns after the action checkbox's.
    owner_column = JobAdmin.list_display.index("owner_column") + 1

    def pages() -> dict[str, tuple[list[float], list[dict[str, Any]]]]:
        today = time.gmtime()
        (jobs,) = ctx.direct.execute("SELECT count(*) FROM pgbackground_job").fetchone()  # type: ignore[misc]
        page = max(1, min(100, math.ceil(jobs / 50)))  # list_per_page is 50
        found = {}
        for key, _label, query in ADMIN_PAGES:
            query = query.format(y=today.tm_year, m=today.tm_mon, d=today.tm_mday, page=page,
                                 owner_column=owner_column)
            url = base_url + query if query.endswith("/") else f"{base_url}?{query}"
            found[key] = _admin_page(client, url, repeats)
        return found

    # Both tables with fresh statistics: the other groups leave jobs the planner has not seen.
    ctx.direct.execute("VACUUM ANALYZE pgbackground_job")
    (before,) = ctx.direct.execute("SELECT count(*) FROM pgbackground_job").fetchone()  # type: ignore[misc]
    small = pages()
    ctx.log(f"admin: adding {n:,} finished jobs")
    (first,) = ctx.direct.execute("SELECT coalesce(max(id), 0) FROM pgbackground_job").fetchone()  # type: ignore[misc]
    try:
        ctx.direct.execute(_ADMIN_FILL, {"n": n, "owner": user.pk})
        ctx.direct.execute("VACUUM ANALYZE pgbackground_job")
        ctx.log(f"admin: {len(ADMIN_PAGES)} pages x {repeats} requests")
        large = pages()
    finally:
        ctx.direct.execute("DELETE FROM pgbackground_job WHERE id > %s", [first])
        ctx.direct.execute("VACUUM pgbackground_job")
    metrics = []
    for key, label, _query in ADMIN_PAGES:
        (mine, queries), (base, base_queries) = large[key], small[key]
        metrics.append(Metric(
            f"admin_{key}_median_ms", f"{label}, {n:,} jobs, median", "ms",
            statistics.median(mine), statistics.median(base),
            baseline_note=f"the same page over the table before the jobs were added"
                          f" ({before:,} jobs)",
            details={"large": _summary(mine), "small": _summary(base),
                     "queries": len(queries), "query_ms": sum(q["ms"] for q in queries),
                     "sql": queries, "sql_small": base_queries}))
    return metrics


GROUPS: dict[str, Callable[[Context], list[Metric]]] = {
    "roundtrip": measure_round_trip,
    "throughput": measure_throughput,
    "throughput2t": measure_throughput_threads,
    "bigresult": measure_big_result,
    "cancel": measure_cancel_progress,
    "claim": measure_claim,
    "drain": measure_drain,
    "bigsql": measure_big_sql,
    "nocache": measure_without_settings_cache,
    "admin": measure_admin_list,
}
