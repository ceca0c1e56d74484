"""How changes are announced: the NOTIFY channels and the SQL that publishes on them.

The tables stay the source of truth; notifications carry ids and small fields only, and are
sent by the statement that records the change, so they are delivered exactly when it commits.
One exception: a job's 'running' event is sent only once it has run for
``executor.RUNNING_EVENT_DELAY`` (most jobs are over sooner, and every NOTIFY wakes every
LISTENing backend of the database).
"""

from __future__ import annotations

import hashlib

# A job was queued: wakes the pools (payload: the job id).
QUEUE_CHANNEL = "pgbackground_queue"
# Cancel requested for a running job (payload: JSON with the id and the grace left in seconds).
CANCEL_CHANNEL = "pgbackground_cancel"
# Every state change and progress report (payload: JSON id/state/pct/message/seq), for feeds.
EVENTS_CHANNEL = "pgbackground_events"
# Length of the progress message carried in an event (the job row holds the whole message).
EVENT_MESSAGE_CHARS = 200


# Prefix of a launcher connection's own channel (suffix: its backend pid), see replies.py.
REPLY_CHANNEL_PREFIX = "pgbackground_reply_"


def job_channel(job_id: int) -> str:
    """The channel on which a job's terminal state is announced (``wait()`` listens to it)."""
    return f"pgbackground_job_{int(job_id)}"


def reply_channel(backend_pid: int) -> str:
    """The channel a launcher connection LISTENs to for the ends of the jobs it launched."""
    return f"{REPLY_CHANNEL_PREFIX}{int(backend_pid)}"


def reply_tag(cookie: int) -> str:
    """What a reply notification carries after the job id: proof that it comes from a statement
    that read the job's row (which holds the cookie), not from any session that can NOTIFY.
    Hashed, so that the notification (readable by every role that LISTENs) does not give the
    cookie away. Must equal REPLY_TAG_SQL."""
    return hashlib.sha256(f"pgbackground reply {int(cookie)}".encode()).hexdigest()[:16]


# reply_tag() in SQL, for the row of a CTE ``j``.
REPLY_TAG_SQL = (
    "left(encode(sha256(convert_to('pgbackground reply ' || j.cookie, 'UTF8')), 'hex'), 16)"
)

# Columns a CTE named ``j`` must return for PUBLISH_FROM_J.
EVENT_COLUMNS = (
    "id, state, progress_pct, progress_message, event_seq, owner_id, notices, notices_dropped,"
    " reply_pid, cookie"
)

# Select-list expressions that publish the rows of a CTE ``j`` (returning EVENT_COLUMNS).
PUBLISH_EXPRS = f"""
       pg_notify('{EVENTS_CHANNEL}', json_build_object(
           'id', j.id, 'state', j.state, 'pct', j.progress_pct,
           'message', left(j.progress_message, {EVENT_MESSAGE_CHARS}), 'seq', j.event_seq,
           'owner', j.owner_id,
           'notices_count', jsonb_array_length(j.notices) + j.notices_dropped)::text),
       CASE WHEN j.state IN ('stopped', 'canceled', 'error')
            THEN pg_notify('pgbackground_job_' || j.id, j.state) END,
       CASE WHEN j.state IN ('stopped', 'canceled', 'error') AND j.reply_pid IS NOT NULL
            THEN pg_notify('{REPLY_CHANNEL_PREFIX}' || j.reply_pid,
                           j.id || ':' || {REPLY_TAG_SQL}) END"""

# A whole SELECT publishing the rows of ``j``; returns (id, state, ...).
PUBLISH_FROM_J = f"SELECT j.id, j.state, {PUBLISH_EXPRS} FROM j"
