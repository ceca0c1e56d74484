"""Django signals sent by pgbackground.

``job_launched`` is sent in the launching process (kwargs: handle, label, owner_id, on_commit).
``job_started`` and ``job_finished`` are sent in the ``runworkers`` process that runs the job
(kwargs: job_id, label, worker_id; ``job_finished`` adds state, sqlstate and duration in seconds).
The pool sends those two robustly: a receiver that raises is logged (logger
``pgbackground.pool``) and the job goes on.
"""

from django.dispatch import Signal

job_launched = Signal()
job_started = Signal()
job_finished = Signal()
