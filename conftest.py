"""Test-wide environment, set before Django reads its settings.

Workers started by the tests heartbeat every 0.2 s and are declared dead after 1.5 s, so that
crash-recovery tests finish quickly; the same values apply to the test process itself (its
``wait()`` also runs recovery).
"""

import os

os.environ.setdefault("PGBACKGROUND_HEARTBEAT_INTERVAL", "0.2")
os.environ.setdefault("PGBACKGROUND_WORKER_LOST_AFTER", "1.5")
os.environ.setdefault("PGBACKGROUND_POLL_INTERVAL", "2")
