"""Job columns whose values PostgreSQL checks through a domain instead of a table CHECK
constraint (migration 0010).

PostgreSQL evaluates every CHECK constraint of a table on every write of a row, whichever
columns the write changes, and reads each constraint's stored expression back and plans it again
for every statement: on the bench machine the two of ``pgbackground_job`` cost about 20 µs an
UPDATE, and a job writes its row four times (launch, claim, outcome, consume). A domain's check
runs only where a value is assigned to the column (the consume assigns neither), from an
expression each backend prepares once. Same rule, same SQLSTATE on violation (23514).

Clients see the base types (``varchar``, ``bigint``) in query results, except in arrays:
``array_agg(state)`` is a ``pgbackground_job_state[]``, which psycopg returns as text; aggregate
``state::text`` instead.
"""

from __future__ import annotations

from typing import Any

from django.db import models

JOB_STATE_DOMAIN = "pgbackground_job_state"
COOKIE_DOMAIN = "pgbackground_cookie"


class JobStateField(models.CharField):
    """``varchar(10)``, one of the job states (domain ``pgbackground_job_state``)."""

    def db_type(self, connection: Any) -> str:
        return JOB_STATE_DOMAIN


class CookieField(models.BigIntegerField):
    """``bigint``, never 0 (domain ``pgbackground_cookie``)."""

    def db_type(self, connection: Any) -> str:
        return COOKIE_DOMAIN
