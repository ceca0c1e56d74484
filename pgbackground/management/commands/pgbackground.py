"""``manage.py pgbackground``: the operator's command line (launch, list, show, cancel, detach,
stats, purge, grant, revoke). Operators address jobs by id: no cookie needed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import (
    BaseCommand,
    CommandError,
    CommandParser,
    DjangoHelpFormatter,
)
from django.db.models.functions import Substr
from django.utils import timezone
from django.utils.translation import gettext as _

from pgbackground import operators
from pgbackground.management import formatting as fmt
from pgbackground.management import jobview

STATES = ("queued", "running", "stopped", "canceled", "error")
STATE_GROUPS = {"active": ("queued", "running"), "finished": ("stopped", "canceled", "error")}


class HelpFormatter(DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order, with descriptions and epilogs (the examples) kept as written."""


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def parse_job_id(text: str) -> int:
    """A job id, given as ``42`` or as a whole handle ``42:<cookie>``."""
    head = text.strip().split(":", 1)[0]
    if head.isdigit() and int(head) > 0 and len(head) <= 19:
        return int(head)
    raise CommandError(
        _("%(text)r is not a job id (a positive integer, or a handle id:cookie)") % {"text": text}
    )


def parse_settings(values: list[str] | None) -> dict[str, str]:
    """``--set NAME=VALUE`` options as a dict (a later NAME wins)."""
    gucs: dict[str, str] = {}
    for raw in values or []:
        name, sep, value = raw.partition("=")
        if not sep or not name.strip():
            raise CommandError(
                _("--set expects NAME=VALUE (e.g. --set work_mem=256MB), got %(raw)r")
                % {"raw": raw}
            )
        gucs[name.strip()] = value
    return gucs


# --- help texts ----------------------------------------------------------------------------

MAIN_EPILOG = """\
Run `manage.py pgbackground SUBCOMMAND --help` for the options of each.
Jobs are addressed by id (operators need no cookie).

examples:
  manage.py pgbackground launch "VACUUM (VERBOSE) big_table" --label nightly --wait
  manage.py pgbackground list --state running
  manage.py pgbackground show 42
  manage.py pgbackground cancel 42 43 --grace 30
  manage.py pgbackground purge --older-than 30d --dry-run
  manage.py pgbackground grant alice
"""

LAUNCH_EPILOG = """\
The job runs in the pool (manage.py runworkers must be running somewhere), as the
database login of PGBACKGROUND['DATABASE'] with this command's session role, and
commits on its own. Without --wait the command prints the handle (id:cookie) and
returns at once; follow the job with `show ID`.

With --wait it prints the job's notices, then its outcome: the command tag and
row count, the result as a table (at most --max-rows rows), or the error with its
SQLSTATE, detail and hint, and exits non-zero if the job did not succeed.
Fetching the result consumes it (a handle's result can be fetched once); with
--max-rows 0 only the tag and row count are printed and the result stays.

examples:
  manage.py pgbackground launch "SELECT now()" --wait
  manage.py pgbackground launch "ANALYZE big_table" --wait --wait-timeout 600
  manage.py pgbackground launch "REINDEX INDEX CONCURRENTLY big_idx" --label reindex --timeout 3600
  manage.py pgbackground launch "SELECT * FROM report()" --set work_mem=256MB \\
      --set statement_timeout=0 --owner alice --wait --max-rows 20
  manage.py pgbackground launch "INSERT INTO audit_log VALUES (now())" --submit
  echo "ANALYZE" | manage.py pgbackground launch - --wait
"""

LIST_EPILOG = """\
Columns: id, state (with progress for running jobs), label, owner, created,
duration (run time; still growing for running jobs), rows (row count of the last
statement), sqlstate (of failed or canceled jobs) and the SQL on one line.

examples:
  manage.py pgbackground list
  manage.py pgbackground list --state running,queued
  manage.py pgbackground list --state error --owner alice --limit 200
  manage.py pgbackground list --label nightly
"""

SHOW_EPILOG = """\
Prints the job's SQL, label, owner, role, the settings (GUCs) applied, timeout and
result limit, the worker and backend pid, the timeline (created, started, finished,
with queue wait and run time), progress, the notices in order (like psql prints
them), the error (SQLSTATE and condition name, message, detail, hint, context and
the failing position in the SQL), the command tag and row count, the result
columns and a preview of the stored result (which does not consume it).

examples:
  manage.py pgbackground show 42
  manage.py pgbackground show 42 --rows 50
"""

CANCEL_EPILOG = """\
A queued job is canceled at once, without running. A running job is asked to stop:
its SQL is canceled (SQLSTATE 57014) and nothing it did commits; with --grace it may
run that long first (values above 3600 s are capped). Finished jobs are left alone.
Prints what happened to each id; exits non-zero if an id does not exist.

examples:
  manage.py pgbackground cancel 42
  manage.py pgbackground cancel 42 43 44 --grace 60
  manage.py pgbackground cancel 42 --wait --wait-timeout 30
"""

DETACH_EPILOG = """\
A detached job keeps running and commits; nobody can fetch its result any more, and
a stored result is dropped at once (pg_background_detach). Prints what happened to
each id; exits non-zero if an id does not exist.

examples:
  manage.py pgbackground detach 42
  manage.py pgbackground detach 42 43
"""

STATS_EPILOG = """\
launched = jobs created; completed = ended stopped; failed = ended error; canceled;
active = queued + running; avg run = mean started-to-finished time of ended jobs.
The counters include purged jobs (purge moves them into an archive).

examples:
  manage.py pgbackground stats
  manage.py pgbackground stats --owner alice --json
"""

PURGE_EPILOG = """\
Deletes finished jobs (stopped, canceled, error) that finished longer ago than
--older-than (default PGBACKGROUND['JOB_RETENTION']), with their stored results.
Queued and running jobs are never touched. Their counts are moved into the
statistics archive, so `stats` gives the same numbers before and after.

Also drops stored results (the job rows stay) of jobs that finished longer ago than
--results-older-than (default PGBACKGROUND['RESULT_RETENTION']), of detached jobs,
and of consumed results after an hour; and deletes stopped workers older than the
job cut-off that no job refers to. Work is done in batches of --batch-size jobs, each
its own short transaction; run it from cron as often as you like.

DURATION: a number with a unit: 30d, 12h, 90m, 45s, 2w, combined like 1d12h, or a
bare number of seconds (0 = everything finished until now).

examples:
  manage.py pgbackground purge
  manage.py pgbackground purge --older-than 7d --dry-run
  manage.py pgbackground purge --older-than 0 --results-older-than 1h
"""

GRANT_EPILOG = """\
A user is added to the group "pgbackground operators" (created by the migrations:
launch_job, view_job, view_all_jobs, cancel_all_jobs, change_job, delete_job) —
pg_background's `GRANT pgbackground_role TO ...`. A group is given those
permissions directly. If a user and a group have the same name, say which with
--user or --group. Operators need is_staff to open the admin.

examples:
  manage.py pgbackground grant alice
  manage.py pgbackground grant dbas --group
"""

REVOKE_EPILOG = """\
Removes a user from the group "pgbackground operators", or takes the operator
permissions away from a group. Permissions the user has some other way (their own,
other groups, superuser) are reported, not removed.

examples:
  manage.py pgbackground revoke alice
  manage.py pgbackground revoke dbas --group
"""


class Command(BaseCommand):
    help = (
        "Operate pgbackground's background SQL jobs: launch, list, show, cancel, detach,\n"
        "stats, purge, and grant/revoke the operator permissions."
    )
    missing_args_message = (
        "say what to do: launch, list, show, cancel, detach, stats, purge, grant or revoke"
        " (see manage.py pgbackground --help)"
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = HelpFormatter
        parser.epilog = MAIN_EPILOG
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(
            dest="action", metavar="SUBCOMMAND", title="subcommands", required=True
        )

        def add(name: str, summary: str, epilog: str) -> CommandParser:
            p: CommandParser = sub.add_parser(
                name, help=summary, description=summary, epilog=epilog,
                formatter_class=HelpFormatter,
            )
            return p

        p = add("launch", "Queue SQL to run in the background and print its handle.",
                LAUNCH_EPILOG)
        p.add_argument("sql", metavar="SQL",
                       help="The SQL string, run like `psql -c` (several statements run in one"
                       " transaction). '-' reads it from standard input.")
        p.add_argument("--label", "-l", metavar="L", help="A label to recognise the job by.")
        p.add_argument("--timeout", "-t", type=float, metavar="S",
                       help="Seconds the job may run; it then ends error/57014. Default:"
                       " PGBACKGROUND['WORKER_TIMEOUT'] (0 = no limit).")
        p.add_argument("--set", "-s", action="append", metavar="NAME=VALUE", dest="gucs",
                       help="A setting (GUC) for the job, e.g. work_mem=256MB; repeat for"
                       " more. It overrides the session's own settings, which carry over.")
        p.add_argument("--max-result-bytes", type=_non_negative_int, metavar="N",
                       help="Largest result to store, in bytes; a larger one fails the job"
                       " with SQLSTATE 54000. Default: PGBACKGROUND['DEFAULT_MAX_RESULT_BYTES'].")
        p.add_argument("--submit", action="store_true",
                       help="Fire-and-forget (pg_background_submit): keep no result rows,"
                       " only the state, tag, row count, notices and errors.")
        p.add_argument("--wait", "-w", action="store_true",
                       help="Wait for the job to finish, print its notices and outcome, and"
                       " exit non-zero if it failed or was canceled.")
        p.add_argument("--wait-timeout", type=float, metavar="S",
                       help="With --wait: give up waiting after S seconds (the job keeps"
                       " running) and exit non-zero. Default: wait as long as it takes.")
        p.add_argument("--max-rows", type=_non_negative_int, default=50, metavar="N",
                       help="With --wait: print at most N result rows (default 50); 0 prints"
                       " only the tag and row count and leaves the result unfetched.")
        p.add_argument("--owner", "-o", metavar="USERNAME",
                       help="Launch on behalf of this user (counts against their MAX_WORKERS"
                       " and shows as theirs). Default: no owner.")

        p = add("list", "List jobs, newest first.", LIST_EPILOG)
        p.add_argument("--state", metavar="S",
                       help="Only jobs in these states, comma-separated: queued, running,"
                       " stopped, canceled, error, or the groups active / finished.")
        p.add_argument("--owner", "-o", metavar="USERNAME", help="Only this user's jobs.")
        p.add_argument("--label", "-l", metavar="SUBSTR",
                       help="Only jobs whose label contains SUBSTR (case-insensitive).")
        p.add_argument("--limit", "-n", type=_positive_int, default=50, metavar="N",
                       help="Show at most N jobs (default 50).")

        p = add("show", "Show everything about one job.", SHOW_EPILOG)
        p.add_argument("id", metavar="ID", help="The job id (or its whole handle id:cookie).")
        p.add_argument("--rows", type=_non_negative_int, default=10, metavar="N",
                       help="Preview at most N rows of a stored result (default 10; 0 = none)."
                       " The preview does not consume the result.")

        p = add("cancel", "Cancel queued or running jobs.", CANCEL_EPILOG)
        p.add_argument("ids", nargs="+", metavar="ID", help="Job ids (or handles id:cookie).")
        p.add_argument("--grace", "-g", type=float, default=0.0, metavar="S",
                       help="Let running jobs run up to S more seconds before they are"
                       " canceled (capped at 3600). Default: 0, cancel now.")
        p.add_argument("--wait", "-w", action="store_true",
                       help="Wait until the jobs have ended and print their final state.")
        p.add_argument("--wait-timeout", type=float, metavar="S",
                       help="With --wait: give up after S seconds and exit non-zero.")

        p = add("detach", "Stop tracking jobs; they keep running.", DETACH_EPILOG)
        p.add_argument("ids", nargs="+", metavar="ID", help="Job ids (or handles id:cookie).")

        p = add("stats", "Show the job counters (pg_background_stats).", STATS_EPILOG)
        p.add_argument("--owner", "-o", metavar="USERNAME", help="Only this user's jobs.")
        p.add_argument("--json", action="store_true", help="Print one JSON object.")

        p = add("purge", "Delete old finished jobs and expired results.", PURGE_EPILOG)
        p.add_argument("--older-than", metavar="DURATION",
                       help="Purge jobs that finished longer ago than this. Default:"
                       " PGBACKGROUND['JOB_RETENTION'].")
        p.add_argument("--results-older-than", metavar="DURATION",
                       help="Drop stored results of jobs that finished longer ago than this."
                       " Default: PGBACKGROUND['RESULT_RETENTION'].")
        p.add_argument("--dry-run", "-n", action="store_true",
                       help="Only report what would be purged.")
        p.add_argument("--batch-size", type=_positive_int, default=10_000, metavar="N",
                       help="Jobs deleted per transaction (default 10000).")

        for name, summary, epilog in (
            ("grant", "Make a user an operator, or give a group the operator permissions.",
             GRANT_EPILOG),
            ("revoke", "Remove a user from the operators, or take the permissions from a group.",
             REVOKE_EPILOG),
        ):
            p = add(name, summary, epilog)
            p.add_argument("name", metavar="USER_OR_GROUP", help="A username or a group name.")
            kind = p.add_mutually_exclusive_group()
            kind.add_argument("--user", action="store_const", const="user", dest="kind",
                              help="NAME is a user (when a group has the same name).")
            kind.add_argument("--group", action="store_const", const="group", dest="kind",
                              help="NAME is a group (when a user has the same name).")

    def handle(self, *args: Any, **options: Any) -> None:
        handler: Callable[[dict[str, Any]], None] = getattr(self, "do_" + options["action"])
        try:
            handler(options)
        except KeyboardInterrupt:
            raise CommandError(_("interrupted")) from None

    # --- helpers -----------------------------------------------------------------------------

    def out(self, line: str = "") -> None:
        self.stdout.write(line)

    def err(self, line: str = "") -> None:
        self.stderr.write(line, style_func=lambda s: s)

    def user(self, name: str | None) -> Any:
        if name is None:
            return None
        try:
            return operators.resolve(name, "user")[1]
        except LookupError as exc:
            raise CommandError(str(exc.args[0])) from None

    # --- launch ----------------------------------------------------------------------------

    def do_launch(self, o: dict[str, Any]) -> None:
        import pgbackground as pgb
        from pgbackground.launcher import validate_seconds

        sql = o["sql"]
        if sql == "-":
            sql = sys.stdin.read()
        owner = self.user(o["owner"])
        gucs = parse_settings(o["gucs"])
        try:
            wait_timeout = validate_seconds(o["wait_timeout"], "--wait-timeout")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        fn = pgb.submit if o["submit"] else pgb.launch
        try:
            h = fn(sql, label=o["label"], timeout=o["timeout"], gucs=gucs or None, owner=owner,
                   max_result_bytes=o["max_result_bytes"])
        except (ValueError, TypeError, pgb.BackgroundError) as exc:
            raise CommandError(str(exc)) from None
        self.out(str(h))
        if not o["wait"]:
            return
        try:
            if not h.wait(timeout=wait_timeout):
                raise CommandError(
                    _("job %(id)s is still %(state)s after %(s)s; it keeps running (see"
                      " `manage.py pgbackground show %(id)s`)")
                    % {"id": h.id, "state": h.state, "s": fmt.seconds(wait_timeout)}
                )
        except KeyboardInterrupt:
            raise CommandError(
                _("interrupted: job %(id)s keeps running; see `manage.py pgbackground show"
                  " %(id)s`") % {"id": h.id}
            ) from None
        self.print_outcome(h, o["max_rows"])

    def print_outcome(self, h: Any, max_rows: int) -> None:
        import pgbackground as pgb

        job = h.job()
        for notice in job.notices or []:
            for line in jobview.notice_lines(notice):
                self.err(line)
        run = fmt.delta(job.started_at, job.finished_at)
        head = _("job %(id)s %(state)s") % {"id": job.id, "state": job.state}
        if run:
            head += " " + _("in %(time)s") % {"time": run}
        if job.command_tag:
            head += f": {job.command_tag}"
        self.out(head)
        if job.state != "stopped":
            for line in jobview.error_lines(
                job.error_sqlstate, job.error_message, job.error_detail, job.error_hint,
                job.error_context, job.error_position, job.sql,
            ):
                self.err(line)
            raise CommandError(
                _("job %(id)s ended %(state)s (SQLSTATE %(sqlstate)s)")
                % {"id": job.id, "state": job.state, "sqlstate": job.error_sqlstate or "?"}
            )
        if job.fire_and_forget or not job.result_columns or max_rows == 0:
            if job.row_count is not None:
                self.out(_("rows: %(n)s") % {"n": job.row_count})
            return
        try:
            result = h.result()
        except pgb.BackgroundError as exc:  # consumed or detached meanwhile
            raise CommandError(str(exc)) from None
        rows = iter(result)
        try:
            for line in jobview.result_table(result.columns, rows, len(result), max_rows):
                self.out(line)
        finally:
            rows.close()
        if max_rows < len(result):
            # The rest was consumed with the result: nobody can read it any more.
            from pgbackground.db import launcher_connection

            launcher_connection().execute(
                "DELETE FROM pgbackground_jobresultchunk WHERE job_id = %s", [h.id]
            )

    # --- list / show -----------------------------------------------------------------------

    def do_list(self, o: dict[str, Any]) -> None:
        from pgbackground.db import models_alias
        from pgbackground.models import Job

        qs = Job.objects.using(models_alias()).select_related("owner").order_by("-id")
        if o["state"]:
            states: set[str] = set()
            for word in (w.strip().lower() for w in o["state"].split(",")):
                if word in STATE_GROUPS:
                    states.update(STATE_GROUPS[word])
                elif word in STATES:
                    states.add(word)
                else:
                    raise CommandError(
                        _("unknown state %(word)r: use %(states)s")
                        % {"word": word, "states": ", ".join([*STATES, *STATE_GROUPS])}
                    )
            qs = qs.filter(state__in=sorted(states))
        owner = self.user(o["owner"])
        if owner is not None:
            qs = qs.filter(owner=owner)
        if o["label"]:
            qs = qs.filter(label__icontains=o["label"])
        limit = o["limit"]
        jobs = list(
            qs.annotate(sql_head=Substr("sql", 1, 400)).only(
                "id", "state", "label", "owner", "created_at", "started_at", "finished_at",
                "row_count", "error_sqlstate", "progress_pct", "cancel_requested_at",
            )[: limit + 1]
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        if not jobs:
            self.out(_("no jobs"))
            return
        now = timezone.now()
        rows = []
        for j in jobs:
            state = j.state
            if state == "running" and j.progress_pct is not None:
                state += f" {j.progress_pct:.0f}%"
            if state.startswith("running") and j.cancel_requested_at:
                state += " " + _("(canceling)")
            duration = fmt.delta(j.started_at, j.finished_at or (now if j.started_at else None))
            rows.append([
                str(j.id), state, fmt.one_line(j.label, 30),
                j.owner.get_username() if j.owner else "", fmt.moment(j.created_at), duration,
                "" if j.row_count is None else str(j.row_count), j.error_sqlstate,
                fmt.one_line(j.sql_head, 60),  # type: ignore[attr-defined]
            ])
        headers = [_("id"), _("state"), _("label"), _("owner"), _("created"), _("duration"),
                   _("rows"), _("sqlstate"), _("sql")]
        right = [True, False, False, False, False, True, True, False, False]
        for line in fmt.table(headers, rows, right=right):
            self.out(line)
        if more:
            self.out(_("(first %(n)d jobs shown; --limit to see more)") % {"n": limit})
        else:
            self.out(_("(1 job)") if len(rows) == 1 else _("(%(n)d jobs)") % {"n": len(rows)})

    def do_show(self, o: dict[str, Any]) -> None:
        from pgbackground.db import launcher_connection, models_alias
        from pgbackground.models import Job
        from pgbackground.results import columns_from_json, iter_rows

        job_id = parse_job_id(o["id"])
        job = (Job.objects.using(models_alias()).select_related("owner", "worker")
               .filter(pk=job_id).first())
        if job is None:
            raise CommandError(_("no job with id %(id)s") % {"id": job_id})
        for line in jobview.job_lines(job, timezone.now()):
            self.out(line)
        readable = (job.state == "stopped" and job.result_columns and job.result_rows
                    and not (job.consumed or job.detached or job.fire_and_forget))
        if o["rows"] and readable:
            columns = columns_from_json(job.result_columns)
            conn = launcher_connection()

            def rows() -> Any:
                for batch in iter_rows(conn, job.id, columns, batch=1):
                    yield from batch

            self.out("")
            self.out(_("Result preview (not consumed):"))
            for line in jobview.result_table(columns, rows(), int(job.result_rows or 0),
                                             o["rows"]):
                self.out(line)

    # --- cancel / detach -------------------------------------------------------------------

    def _ids(self, texts: list[str]) -> list[int]:
        return list(dict.fromkeys(parse_job_id(t) for t in texts))

    def _untouched(self, ids: list[int]) -> dict[int, tuple[str, bool]]:
        from pgbackground.db import models_alias
        from pgbackground.models import Job

        return {
            pk: (state, detached)
            for pk, state, detached in Job.objects.using(models_alias())
            .filter(pk__in=ids).values_list("pk", "state", "detached")
        }

    def _missing(self, missing: list[int]) -> None:
        if missing:
            raise CommandError(
                _("no job with id %(ids)s") % {"ids": ", ".join(map(str, missing))}
            )

    def do_cancel(self, o: dict[str, Any]) -> None:
        from pgbackground.conf import MAX_CANCEL_GRACE
        from pgbackground.handles import cancel_ids
        from pgbackground.launcher import validate_seconds

        ids = self._ids(o["ids"])
        try:
            grace = validate_seconds(o["grace"], "--grace", cap=MAX_CANCEL_GRACE) or 0.0
            wait_timeout = validate_seconds(o["wait_timeout"], "--wait-timeout")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        touched = dict(cancel_ids(ids, grace))
        known = self._untouched([i for i in ids if i not in touched])
        missing: list[int] = []
        requested: list[int] = []
        for job_id in ids:
            if job_id in touched:
                if touched[job_id] == "canceled":
                    msg = _("canceled (it had not started)")
                else:
                    requested.append(job_id)
                    msg = (_("cancel requested: it may run %(grace)s more") %
                           {"grace": fmt.seconds(grace)} if grace else _("cancel requested"))
            elif job_id in known:
                state = known[job_id][0]
                msg = (_("already finished (%(state)s)") % {"state": state}
                       if state in STATE_GROUPS["finished"] else state)
            else:
                missing.append(job_id)
                msg = _("not found")
            self.out(f"{job_id}: {msg}")
        if o["wait"] and requested:
            self._wait_and_report(requested, wait_timeout)
        self._missing(missing)

    def _wait_and_report(self, ids: list[int], timeout: float | None) -> None:
        from pgbackground.db import models_alias
        from pgbackground.handles import Handle
        from pgbackground.models import Job

        cookies = dict(Job.objects.using(models_alias()).filter(pk__in=ids)
                       .values_list("pk", "cookie"))
        deadline = None if timeout is None else time.monotonic() + timeout
        late: list[int] = []
        for job_id in ids:
            if job_id not in cookies:  # pragma: no cover - purged meanwhile
                continue
            h = Handle(job_id, cookies[job_id])
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not h.wait(timeout=left):
                late.append(job_id)
                self.out(f"{job_id}: " + _("still %(state)s") % {"state": h.state})
                continue
            state = h.state
            note = ""
            if state == "stopped":
                note = " " + _("(it finished before the cancel took effect)")
            elif state == "error":
                err = h.error_info()
                if err is not None:
                    note = f" (SQLSTATE {err.sqlstate}: {err.message})"
            self.out(f"{job_id}: {state}{note}")
        if late:
            raise CommandError(
                _("still running after %(s)s: %(ids)s")
                % {"s": fmt.seconds(timeout), "ids": ", ".join(map(str, late))}
            )

    def do_detach(self, o: dict[str, Any]) -> None:
        from pgbackground.handles import detach_ids

        ids = self._ids(o["ids"])
        touched = dict(detach_ids(ids))
        known = self._untouched([i for i in ids if i not in touched])
        missing: list[int] = []
        for job_id in ids:
            if job_id in touched:
                if touched[job_id] in STATE_GROUPS["active"]:
                    msg = _("detached: it keeps running (%(state)s); its result will be dropped")
                else:
                    msg = _("detached (%(state)s): its stored result was dropped")
                msg %= {"state": touched[job_id]}
            elif job_id in known:
                msg = _("already detached (%(state)s)") % {"state": known[job_id][0]}
            else:
                missing.append(job_id)
                msg = _("not found")
            self.out(f"{job_id}: {msg}")
        self._missing(missing)

    # --- stats / purge ---------------------------------------------------------------------

    def do_stats(self, o: dict[str, Any]) -> None:
        import pgbackground as pgb

        s = pgb.stats(owner=self.user(o["owner"]))
        if o["json"]:
            self.out(json.dumps(s._asdict()))
            return
        avg = "" if s.avg_execution_ms is None else fmt.seconds(s.avg_execution_ms / 1000)
        pairs = [
            (_("launched"), str(s.workers_launched)),
            (_("completed"), str(s.workers_completed)),
            (_("failed"), str(s.workers_failed)),
            (_("canceled"), str(s.workers_canceled)),
            (_("active"), str(s.workers_active)),
            (_("avg run time"), avg or _("n/a")),
            (_("max workers"), _("%(n)s per owner") % {"n": s.max_workers}),
        ]
        w = max(len(k) for k, _v in pairs)
        for k, v in pairs:
            self.out(f"{k + ':':<{w + 1}} {v}")

    def do_purge(self, o: dict[str, Any]) -> None:
        from pgbackground import purge

        kwargs: dict[str, Any] = {"dry_run": o["dry_run"], "batch_size": o["batch_size"]}
        for opt, key in (("older_than", "older_than"),
                         ("results_older_than", "results_older_than")):
            if o[opt] is not None:
                try:
                    kwargs[key] = purge.parse_duration(o[opt])
                except ValueError as exc:
                    raise CommandError(f"--{opt.replace('_', '-')}: {exc}") from None
        report = purge.purge(**kwargs)
        dry = report.dry_run
        if report.job_cutoff is None:
            self.out(_("Job retention is off (PGBACKGROUND['JOB_RETENTION'] is None): no jobs"
                       " purged; pass --older-than to purge anyway."))
        else:
            by_state = ", ".join(f"{s} {n}" for s, n in sorted(report.jobs_by_state.items()))
            line = (_("Would purge %(n)d finished jobs") if dry
                    else _("Purged %(n)d finished jobs")) % {"n": report.jobs}
            if by_state:
                line += f" ({by_state})"
            line += " " + _("that finished before %(cutoff)s") % {
                "cutoff": fmt.moment(report.job_cutoff)}
            if report.job_chunks:
                line += ", " + _("with %(chunks)d result chunks (%(size)s)") % {
                    "chunks": report.job_chunks, "size": fmt.size(report.job_chunk_bytes)}
            if report.jobs and not dry:
                line += "; " + _("their counts are kept in the statistics archive")
            self.out(line + ".")
        self.out(
            (_("Would drop the stored results of %(n)d jobs") if dry
             else _("Dropped the stored results of %(n)d jobs")) % {"n": report.results_dropped}
            + " " + _("(the jobs stay): %(chunks)d result chunks, %(size)s.") % {
                "chunks": report.result_chunks, "size": fmt.size(report.result_chunk_bytes)}
        )
        if report.job_cutoff is not None:
            self.out(
                (_("Would delete %(n)d stopped workers.") if dry
                 else _("Deleted %(n)d stopped workers.")) % {"n": report.workers}
            )

    # --- grant / revoke --------------------------------------------------------------------

    def _resolve(self, o: dict[str, Any]) -> tuple[str, Any]:
        try:
            return operators.resolve(o["name"], o["kind"])
        except (LookupError, ValueError) as exc:
            raise CommandError(str(exc.args[0])) from None

    def do_grant(self, o: dict[str, Any]) -> None:
        kind, obj = self._resolve(o)
        group_name = operators.OPERATORS_GROUP
        if kind == "group":
            added = operators.grant_group(obj)
            if added:
                self.out(_("Group %(g)r now has the operator permissions (added: %(p)s).")
                         % {"g": obj.name, "p": ", ".join(added)})
            else:
                self.out(_("Group %(g)r already had every operator permission.")
                         % {"g": obj.name})
            return
        name = obj.get_username()
        if not hasattr(obj, "groups"):
            raise CommandError(_("the user model has no groups: grant permissions directly"))
        if operators.grant_user(obj):
            self.out(_("%(u)s added to group %(g)r.") % {"u": name, "g": group_name})
        else:
            self.out(_("%(u)s is already in group %(g)r.") % {"u": name, "g": group_name})
        if not getattr(obj, "is_active", True):
            self.out(_("note: %(u)s is inactive and cannot log in.") % {"u": name})
        if not getattr(obj, "is_staff", True):
            self.out(_("note: %(u)s is not staff (is_staff=False), so cannot open the admin.")
                     % {"u": name})

    def do_revoke(self, o: dict[str, Any]) -> None:
        from django.contrib.auth.models import Permission
        from django.db.models import Q

        kind, obj = self._resolve(o)
        group_name = operators.OPERATORS_GROUP
        if kind == "group":
            removed = operators.revoke_group(obj)
            if removed:
                self.out(_("Group %(g)r lost the operator permissions (removed: %(p)s).")
                         % {"g": obj.name, "p": ", ".join(removed)})
            else:
                self.out(_("Group %(g)r had none of the operator permissions.")
                         % {"g": obj.name})
            return
        name = obj.get_username()
        if not hasattr(obj, "groups"):
            raise CommandError(_("the user model has no groups: revoke permissions directly"))
        if operators.revoke_user(obj):
            self.out(_("%(u)s removed from group %(g)r.") % {"u": name, "g": group_name})
        else:
            self.out(_("%(u)s was not in group %(g)r.") % {"u": name, "g": group_name})
        left = sorted(set(
            Permission.objects.filter(
                Q(user=obj) | Q(group__user=obj), content_type__app_label="pgbackground",
                codename__in=operators.OPERATOR_PERMISSIONS,
            ).values_list("codename", flat=True)
        ))
        if left:
            self.out(_("note: %(u)s still has %(p)s through their own permissions or other"
                       " groups.") % {"u": name, "p": ", ".join(left)})
        if getattr(obj, "is_superuser", False):
            self.out(_("note: %(u)s is a superuser and keeps every permission.") % {"u": name})
