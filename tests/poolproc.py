"""Start and stop real ``manage.py runworkers`` processes against the test database."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    """The URL of the database the tests use (pytest-django's test database)."""
    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    options = s.get("OPTIONS") or {}
    # django-environ puts a socket folder given as ``?host=`` in OPTIONS, not HOST.
    host = s.get("HOST") or options.get("host") or "127.0.0.1"
    port = s.get("PORT") or options.get("port") or 5432
    if host.startswith("/"):  # a Unix socket folder (the embedded server): goes in the query
        return f"postgres://{user}{password}@/{s['NAME']}?host={quote(host, safe='')}&port={port}"
    return f"postgres://{user}{password}@{host}:{port}/{s['NAME']}"


class PoolProcess:
    """A ``runworkers`` subprocess; its output is collected line by line for the tests."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworkers", *self.args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self.worker_id = int(self.expect("running").split("worker ", 1)[1].split(" ", 1)[0])

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Block until an output line contains ``text``; that line."""
        for line in self.lines:
            if text in line and line not in getattr(self, "_seen", set()):
                self._mark(line)
                return line
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"runworkers printed no line with {text!r} in {timeout} s:\n" + self.output
                ) from None
            if line is None:
                raise AssertionError(
                    f"runworkers exited ({self.proc.poll()}) before printing {text!r}:\n"
                    + self.output
                )
            if text in line:
                self._mark(line.rstrip("\n"))
                return line

    def _mark(self, line: str) -> None:
        seen = getattr(self, "_seen", set())
        seen.add(line)
        self._seen = seen

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                "runworkers did not stop after SIGTERM:\n" + self.output
            ) from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
