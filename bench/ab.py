"""Paired A/B: this checkout against another one, in the same minutes.

    python bench/ab.py REV_OR_DIR [--rounds N]

This VM's speed drifts by up to 50 % between minutes, so two bench runs a few minutes apart
cannot tell a 5 % change. Here two launcher processes, one per checkout, each with its own
database and its own ``runworkers --concurrency 2`` pool, take turns in short bursts:
300 ``launch()+result()`` round trips, 2,000 jobs launched from two threads then waited for,
1,000 from one. Each round runs both sides back to back (alternating which goes first) and the
ratio of the pair is kept: the medians of the pairs' ratios are what to read.

REV_OR_DIR is a directory holding another checkout, or a git revision of this repository (a
temporary worktree is made for it and removed after). Its ``bench/harness.py`` is used for its
side (any revision since the bench's second session). Two databases (``--db-name``, with
``_a`` and ``_b``) are created and dropped on the server (``--server-url``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


def worker(tree: Path, server_url: str, db_name: str) -> None:
    """One side: set up its database and pool from ``tree``, then run the bursts it is sent."""
    sys.path[:0] = [str(tree / "bench"), str(tree)]
    os.chdir(tree)
    from harness import (  # type: ignore[import-not-found]  # the other tree's, on sys.path
        PoolProcess,
        close_django_connections,
        drop_database,
        recreate_database,
        setup_django,
    )

    url = recreate_database(server_url, db_name)
    setup_django(url)
    pool = PoolProcess(url, 2, env={"PGBACKGROUND_JOBS_LOG_LEVEL": "WARNING"})
    try:
        pool.wait_running()
        from django.db import connections

        import pgbackground as pgb
        from pgbackground.db import discard_launcher_connection, launcher_connection

        def round_trips(n: int) -> float:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                rows = pgb.launch("SELECT 1").result().rows
                assert rows == [(1,)], rows
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1000

        def throughput(n: int, threads: int) -> float:
            ready = threading.Barrier(threads + 1)
            ends: list[float] = []

            def launch_and_wait() -> None:
                try:
                    launcher_connection()
                    connections["default"].ensure_connection()
                    ready.wait()
                    handles = [pgb.launch("SELECT 1") for _ in range(n // threads)]
                    for h in handles:
                        h.wait()
                    ends.append(time.perf_counter())
                finally:  # this thread's connections, or the database cannot be dropped
                    discard_launcher_connection()
                    connections.close_all()

            running = [threading.Thread(target=launch_and_wait) for _ in range(threads)]
            for t in running:
                t.start()
            ready.wait()
            start = time.perf_counter()
            for t in running:
                t.join()
            return n / (max(ends) - start)

        round_trips(30)  # warm-up: connections, prepared statements, caches
        print("ready", flush=True)
        for line in sys.stdin:
            command, *args = line.split()
            if command == "rt":
                print(json.dumps(round_trips(int(args[0]))), flush=True)
            elif command == "tp":
                print(json.dumps(throughput(int(args[0]), int(args[1]))), flush=True)
            else:
                break
    finally:
        pool.stop()
        close_django_connections()
        drop_database(server_url, db_name)


def _ask(proc: subprocess.Popen[str], command: str) -> float:
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    stdin.write(command + "\n")
    stdin.flush()
    answer = stdout.readline()
    if not answer:
        raise RuntimeError(f"a side stopped answering ({command!r}); its log is above")
    return float(json.loads(answer))


def _start(tree: Path, server_url: str, db_name: str, log: IO[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), server_url,
         db_name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the side for {tree} did not start")
    return proc


def compare(
    other: Path, rounds: int, *, server_url: str, db_name: str, quick: bool = False
) -> dict[str, dict[str, Any]]:
    """Run ``rounds`` paired rounds; per metric, both sides' values and the pairs' ratios."""
    sides = {"other": other, "this": ROOT}
    results: dict[str, dict[str, list[float]]] = {
        m: {"other": [], "this": []} for m in ("rt", "tp2", "tp1")}
    commands = ({"rt": "rt 30", "tp2": "tp 200 2", "tp1": "tp 100 1"} if quick
                else {"rt": "rt 300", "tp2": "tp 2000 2", "tp1": "tp 1000 1"})
    with tempfile.TemporaryFile(mode="w+") as log:
        procs = {k: _start(t, server_url, f"{db_name}_{'a' if k == 'other' else 'b'}", log)
                 for k, t in sides.items()}
        try:
            for r in range(rounds):
                order = ["other", "this"] if r % 2 == 0 else ["this", "other"]
                for metric, command in commands.items():
                    for side in order:
                        results[metric][side].append(_ask(procs[side], command))
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            raise
        finally:
            for proc in procs.values():
                if proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                proc.wait(120)
        if any(proc.returncode for proc in procs.values()):
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            raise RuntimeError("a side failed while stopping (its log is above)")
    summary: dict[str, dict[str, Any]] = {}
    for metric, by_side in results.items():
        ratios = [t / o for o, t in zip(by_side["other"], by_side["this"], strict=True)]
        summary[metric] = {**by_side, "ratios": ratios}
    return summary


def _checkout(rev_or_dir: str) -> tuple[Path, Path | None]:
    """The other checkout's directory, and the temporary worktree to remove (if one was made)."""
    path = Path(rev_or_dir)
    if path.is_dir():
        return path.resolve(), None
    tmp = Path(tempfile.mkdtemp(prefix="pgb-ab-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tmp),
                    rev_or_dir], check=True)
    return tmp, tmp


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(Path(argv[1]), argv[2], argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("other", metavar="REV_OR_DIR",
                   help="the checkout to compare with: a directory, or a git revision")
    p.add_argument("--rounds", type=int, default=8, metavar="N",
                   help="paired rounds (default 8; about 8 s each)")
    p.add_argument("--server-url", default="postgres://postgres@127.0.0.1:5432/postgres",
                   metavar="URL", help="server to create the databases on (default: %(default)s)")
    p.add_argument("--db-name", default="pgbackground_ab", metavar="NAME",
                   help="the databases are NAME_a (the other checkout) and NAME_b (this one)")
    p.add_argument("--quick", action="store_true",
                   help="bursts a tenth of the size: a smoke run, not a measurement")
    args = p.parse_args(argv)
    other, worktree = _checkout(args.other)
    try:
        summary = compare(other, args.rounds, server_url=args.server_url,
                          db_name=args.db_name, quick=args.quick)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(worktree)], check=False)
    scale = 10 if args.quick else 1
    labels = {"rt": "launch()+result() SELECT 1, median ms",
              "tp2": f"jobs/s, {2000 // scale:,} x SELECT 1, 2 launching threads",
              "tp1": f"jobs/s, {1000 // scale:,} x SELECT 1, 1 launching thread"}
    print(f"this checkout vs {args.other}, {args.rounds} paired rounds")
    for metric, s in summary.items():
        r = s["ratios"]
        print(f"{labels[metric]:<48} other {statistics.median(s['other']):8.2f}"
              f"  this {statistics.median(s['this']):8.2f}"
              f"  this/other median {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
