"""What the benchmark needs around the measurements: its database, a real ``runworkers``
process, memory high-water marks from /proc, and the facts about the machine.

Nothing here sleeps to synchronise: the pool is "up" when it prints its running line, and "down"
when its process has exited.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_URL = "postgres://postgres@127.0.0.1:5432/postgres"


class BenchFailure(RuntimeError):
    """A job failed, the pool died or misbehaved: the run is not valid (exit status 1)."""


# --- the database --------------------------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    """``server_url`` with its database replaced by ``name``."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def recreate_database(server_url: str, name: str) -> str:
    """Drop (if it exists) and create database ``name``; its URL.

    No ``WITH (FORCE)``: if someone else is using it (another bench run), say so and stop
    rather than cut their connections.
    """
    with psycopg.connect(server_url, autocommit=True) as conn:
        users = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]
        ).fetchone()
        if users and users[0]:
            raise BenchFailure(
                f"database {name!r} is in use by {users[0]} connection(s) (another bench run?);"
                " pass --db-name to use another name"
            )
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name)))
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {}").format(pgsql.Identifier(name)))


def setup_django(url: str) -> None:
    """Point the demo settings at ``url`` (DEBUG off, as in production), set Django up and
    migrate."""
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "demo.settings"
    # DEBUG=True makes every Django cursor record its queries: not what a deployment measures.
    os.environ["DEBUG"] = "False"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def close_django_connections() -> None:
    from django.db import connections

    from pgbackground.db import close_launcher_connections

    close_launcher_connections()
    connections.close_all()


# --- the pool ------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the pool gets SIGTERM if the bench dies without cleaning up (kill -9)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class PoolProcess:
    """``manage.py runworkers`` against the bench database.

    stdout (two lines: running / stopped) is read by a thread; the pool's log (stderr; a line
    per job with --job-log-lines) goes to a temporary file so that reading it costs the launcher
    nothing.
    """

    def __init__(self, url: str, concurrency: int, env: dict[str, str] | None = None) -> None:
        self.log = tempfile.TemporaryFile(mode="w+", prefix="pgb-bench-pool-")  # noqa: SIM115
        full_env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1",
                    "DEBUG": "False", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworkers",
             "--concurrency", str(concurrency),
             # Jobs still running at the end exist only after an error or Ctrl+C: don't linger.
             "--shutdown-grace", "2"],
            cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=self.log, text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.stdout: collections.deque[str] = collections.deque(maxlen=50)
        self.running = threading.Event()
        self.exited = threading.Event()
        self.stopping = False
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        name="bench-pool-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.stdout.append(line.rstrip("\n"))
            if " running " in line:
                self.running.set()
        self.exited.set()
        self.running.set()  # wake wait_running(); it checks whether the process lives

    def wait_running(self, timeout: float = 60.0) -> None:
        """Block until the pool printed its running line (or fail with its output)."""
        if not self.running.wait(timeout) or self.exited.is_set():
            raise BenchFailure("runworkers did not start:\n" + self.output())

    def output(self, tail: int = 40) -> str:
        self.log.flush()
        self.log.seek(0)
        log = self.log.read().splitlines()[-tail:]
        return "\n".join([*self.stdout, *log])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit status (SIGKILL after ``timeout``)."""
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        self._reader.join(5.0)
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@contextlib.contextmanager
def watchdog(pool: PoolProcess, deadline_s: float) -> Iterator[Callable[[], str | None]]:
    """If the pool dies, or the run outlives ``deadline_s``, cancel every job so that the
    launcher blocked in ``result()``/``wait()`` gets an error instead of hanging. Yields a
    function returning why it fired (or None)."""
    fired: list[str] = []
    done = threading.Event()

    def watch() -> None:
        try:
            rc = pool.proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            reason = f"the benchmark ran longer than {deadline_s:.0f} s"
        else:
            if pool.stopping or done.is_set():
                return
            reason = f"runworkers exited unexpectedly with status {rc}"
        if done.is_set():
            return
        fired.append(reason)
        from django.db import connections

        import pgbackground as pgb
        from pgbackground.db import discard_launcher_connection

        # The launcher may still be queueing jobs: keep canceling until the run gives up.
        try:
            while True:
                with contextlib.suppress(Exception):
                    pgb.cancel_all()
                if done.wait(0.5):
                    break
        finally:
            discard_launcher_connection()  # this thread's connections only
            connections.close_all()

    thread = threading.Thread(target=watch, name="bench-watchdog", daemon=True)
    thread.start()
    try:
        yield lambda: fired[0] if fired else None
    finally:
        done.set()


# --- profiling -----------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(directory: Path | None, name: str, pool_pid: int) -> Iterator[None]:
    """With a directory: cProfile this process (``<name>-launcher.pstats``) and, if py-spy is
    installed, sample the pool (``<name>-pool.txt``: collapsed stacks, the input of flame graph
    tools such as speedscope or flamegraph.pl) while the block runs."""
    if directory is None:
        yield
        return
    import cProfile
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    spy = None
    if shutil.which("py-spy"):
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pool_pid), "--threads", "--rate", "250",
             "--nonblocking", "--format", "raw", "--output", str(directory / f"{name}-pool.txt")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert spy.stdout is not None
        spy.stdout.readline()  # "Sampling process ..." once attached (or an error, then EOF)
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(directory / f"{name}-launcher.pstats")
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl+C
            try:
                spy.communicate(timeout=60)  # drains its remaining output
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.communicate()


# --- memory --------------------------------------------------------------------------------------


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchFailure(f"/proc/{pid}/status has no {field}")


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set since the last :func:`reset_peak_rss`."""
    return _status_kb(pid, "VmHWM") / 1024


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def release_memory() -> None:
    """Collect garbage and give freed heap back to the OS, so that a measurement starts low."""
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# --- CPU -----------------------------------------------------------------------------------------


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_is_local(conn: psycopg.Connection[Any]) -> bool:
    host = conn.info.host
    return host.startswith("/") or host in ("127.0.0.1", "localhost", "::1")


class CpuMeter:
    """CPU seconds used by the launcher (this process), the pool and the PostgreSQL backends of
    the bench database between :meth:`start` and :meth:`stop` (backends only when the server
    runs on this machine; a backend that comes or goes in between is not counted). Backends are
    also broken down by application_name (launcher, control, job, listener connections...)."""

    def __init__(self, conn: psycopg.Connection[Any], pool_pid: int) -> None:
        self.conn, self.pool_pid = conn, pool_pid
        self.local = server_is_local(conn)
        self._start: dict[int, float] = {}
        self._names: dict[int, str] = {}

    def _snapshot(self) -> dict[int, float]:
        pids = {os.getpid(): "launcher", self.pool_pid: "pool"}
        if self.local:
            me = self.conn.info.backend_pid
            for pid, name in self.conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE datname = current_database()"
            ).fetchall():
                label = "bench (direct)" if pid == me else _backend_label(name)
                pids[pid] = "postgres: " + label
        self._names.update(pids)
        return {pid: cpu for pid in pids if (cpu := _cpu_s(pid)) is not None}

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group ("launcher", "pool", "postgres") since :meth:`start`, plus
        "postgres: <connection>" lines."""
        end = self._snapshot()
        used: dict[str, float] = {"launcher": 0.0, "pool": 0.0}
        if self.local:
            used["postgres"] = 0.0
        for pid, t in self._start.items():
            if pid not in end:
                continue
            name = self._names[pid]
            used[name] = used.get(name, 0.0) + end[pid] - t
            if name.startswith("postgres: "):
                used["postgres"] += end[pid] - t
        return used


def _backend_label(application_name: str) -> str:
    """"pgbackground control w12 s0" -> "pgbackground control"; "pgbackground w12 s0" (a job
    connection) -> "pgbackground job"; "" -> Django's own connection."""
    words = [w for w in application_name.split()
             if not (len(w) > 1 and w[0] in "ws" and w[1:].isdigit())]
    if words == ["pgbackground"]:
        return "pgbackground job"
    return " ".join(words) or "django (no application_name)"


# --- facts ---------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mb() -> float | None:
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024)
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pgbackground"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("+dirty" if dirty.strip() else "")


def machine_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import django

    settings = dict(conn.execute(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s)",
        [["synchronous_commit", "fsync", "shared_buffers", "wal_sync_method", "max_connections"]],
    ).fetchall())
    return {
        "loadavg_at_start": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": conn.execute("SHOW server_version").fetchone()[0],  # type: ignore[index]
        "postgresql_full": conn.execute("SELECT version()").fetchone()[0],  # type: ignore[index]
        "postgresql_settings": settings,
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "django": django.get_version(),
        "git_commit": _git_commit(),
    }


def clock_offset(conn: psycopg.Connection[Any], samples: int = 5) -> float:
    """Server clock minus this process's ``time.time()``, in seconds (best of a few probes).

    Progress latency compares a timestamp taken by the job's SQL with the launcher's clock."""
    import time

    best: tuple[float, float] | None = None
    for _ in range(samples):
        t0 = time.time()
        (server,) = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8"
                                 ).fetchone()  # type: ignore[misc]
        t1 = time.time()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, float(server) - (t0 + t1) / 2)
    assert best is not None
    return best[1]
