"""``manage.py runworkers``: the pool that runs background SQL jobs."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgbackground.pool import Pool


class Command(BaseCommand):
    help = (
        "Run pgbackground's worker pool: claim queued jobs and run their SQL, each slot on its"
        " own PostgreSQL connection. Run one per machine, on as many machines as you like:"
        " every job runs exactly once. SIGTERM/SIGINT stop claiming, let running jobs finish"
        " within --shutdown-grace seconds, then cancel them; a second signal cancels at once."
    )
    requires_system_checks: list[str] = []  # checks run below, with a clear error

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            "-c",
            type=int,
            default=2,
            metavar="N",
            help="Jobs run at once by this process (N slots, 2 connections each). Default: 2.",
        )
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=30.0,
            metavar="S",
            help="Seconds running jobs may take to finish after SIGTERM before they are"
            " canceled. Default: 30.",
        )
        parser.add_argument(
            "--worker-id",
            default=None,
            metavar="ID",
            help="Name of this worker in logs and the admin. Default: HOST:PID.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        concurrency = options["concurrency"]
        grace = options["shutdown_grace"]
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1")
        if grace < 0 or grace != grace:
            raise CommandError("--shutdown-grace must be a number of seconds >= 0")
        self.check(tags=["compatibility"])

        pool = Pool(concurrency=concurrency, name=options["worker_id"], shutdown_grace=grace)
        stop = threading.Event()
        signals_seen = 0

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                stop.set()
            else:
                pool.cancel_running("shutdown")

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        pool.start()
        self.stdout.write(
            f"pgbackground worker {pool.worker_id} ({pool.name}) running {concurrency} slot(s);"
            " stop with Ctrl+C or SIGTERM"
        )
        self.stdout.flush()
        while not stop.wait(0.5):
            pass
        pool.shutdown(grace=0.0 if signals_seen > 1 else grace)
        self.stdout.write("pgbackground worker stopped")
