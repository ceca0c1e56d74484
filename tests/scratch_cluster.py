"""A throwaway PostgreSQL cluster (Debian's pg_createcluster) for tests that restart the server,
so that restarting it disturbs nothing else on the machine."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which("pg_createcluster") is not None and Path("/etc/postgresql").is_dir()


class Cluster:
    def __init__(self, version: str, name: str, port: int) -> None:
        self.version, self.name, self.port = version, name, port

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def ctl(self, action: str, *args: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *args],
            check=True,
            capture_output=True,
        )

    def restart(self) -> None:
        self.ctl("restart", "-m", "fast")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", dbname,
             "-tAc", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()


@contextmanager
def scratch_cluster() -> Iterator[Cluster]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    name = f"pgbtest{secrets.token_hex(3)}"
    port = _free_port()
    subprocess.run(
        ["pg_createcluster", version, name, "-p", str(port), "--", "--auth=trust"],
        check=True, capture_output=True,
    )
    cluster = Cluster(version, name, port)
    try:
        cluster.ctl("start")
        yield cluster
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True)
