"""Driven by tests/test_restart.py in its own process (DATABASE_URL = a scratch cluster).

Launch two long jobs that fill the pool and three that stay queued, say "ready", wait for "go"
on stdin (the server restarts meanwhile), then report every job's outcome as one JSON line."""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
django.setup()

import pgbackground as pgb  # noqa: E402
from tests.helpers import EventListener  # noqa: E402

events = EventListener()
running = [pgb.launch("SELECT pgbackground_progress(1, 'go'); SELECT pg_sleep(60)")
           for _ in range(2)]
try:
    for h in running:
        events.wait_for(h.id, lambda e: e["pct"] == 1, timeout=90)
except AssertionError:
    from pgbackground.models import Job, Worker

    print("jobs:", list(Job.objects.values_list("id", "state", "worker_id", "backend_pid")),
          "workers:", list(Worker.objects.values_list("id", "pid", "stopped_at")),
          "events:", events.seen, file=sys.stderr, flush=True)
    raise
events.close()
# Both slots are busy: these stay queued across the restart.
queued = [pgb.launch(f"SELECT {i}") for i in range(3)]
assert all(h.state == "queued" for h in queued)
print("ready", flush=True)
sys.stdin.readline()

from django.db import connections  # noqa: E402

from pgbackground.db import discard_launcher_connection  # noqa: E402

connections.close_all()
discard_launcher_connection()
out = {
    "running": [[h.wait(60), h.state, (h.error_info() or (None,))[0]] for h in running],
    "queued": [[h.wait(60), h.result().rows[0][0]] for h in queued],
}
print(json.dumps(out), flush=True)
