"""Text views of jobs for the operator CLI: ``show``, a job's outcome, notices and errors the way
psql prints them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import islice
from typing import Any

import psycopg
from django.utils.translation import gettext as _

from . import formatting as fmt

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def condition_name(sqlstate: str | None) -> str:
    """PostgreSQL's condition name for a SQLSTATE (``22012`` → ``division_by_zero``), or ''."""
    if not sqlstate:
        return ""
    try:
        cls = psycopg.errors.lookup(sqlstate)
    except KeyError:
        return ""
    return _CAMEL.sub("_", cls.__name__).lower()


def _field(label: str, value: str | None) -> list[str]:
    if not value:
        return []
    first, *rest = str(value).splitlines() or [""]
    return [f"{label}:  {first}", *(" " * (len(label) + 3) + line for line in rest)]


def notice_lines(notice: dict[str, Any]) -> list[str]:
    """One notice as psql prints it: ``WARNING:  message`` then DETAIL / HINT / CONTEXT."""
    severity = notice.get("severity") or "NOTICE"
    lines = _field(severity, notice.get("message") or " ")
    lines += _field("DETAIL", notice.get("detail"))
    lines += _field("HINT", notice.get("hint"))
    lines += _field("CONTEXT", notice.get("context"))
    return lines


def error_lines(
    sqlstate: str, message: str, detail: str | None, hint: str | None, context: str | None,
    position: int | None = None, sql: str | None = None,
) -> list[str]:
    """A job's error as psql prints it with VERBOSITY verbose (SQLSTATE first), plus its
    condition name and, when PostgreSQL gave a position, the failing line with a caret."""
    head = f"{sqlstate}: {message}" if sqlstate else message
    lines = _field("ERROR", head)
    name = condition_name(sqlstate)
    if name:
        lines.append(f"CONDITION:  {name}")
    lines += _field("DETAIL", detail)
    lines += _field("HINT", hint)
    if position and sql:
        lines += position_lines(sql, position)
    lines += _field("CONTEXT", context)
    return lines


def position_lines(sql: str, position: int) -> list[str]:
    """psql's ``LINE n: ...`` and a caret under the character at ``position`` (1-based)."""
    if not 1 <= position <= len(sql) + 1:
        return []
    before = sql[: position - 1]
    line_no = before.count("\n") + 1
    line_start = before.rfind("\n") + 1
    line_end = sql.find("\n", line_start)
    line = sql[line_start: None if line_end < 0 else line_end].replace("\t", " ")
    prefix = f"LINE {line_no}: "
    column = fmt.width(sql[line_start: position - 1].replace("\t", " "))
    return [prefix + line, " " * (len(prefix) + column) + "^"]


def result_table(
    columns: list[Any], rows: Iterator[tuple[Any, ...]], total: int, max_rows: int
) -> list[str]:
    """An aligned table of at most ``max_rows`` rows and psql's ``(n rows)`` footer."""
    shown = list(islice(rows, max_rows))
    right = [
        any(fmt.is_numeric(r[i]) for r in shown) and all(fmt.is_numeric(r[i]) or r[i] is None
                                                         for r in shown)
        for i in range(len(columns))
    ]
    lines = fmt.table([c.name for c in columns], shown, right=right)
    if len(shown) < total:
        lines.append(
            _("(%(shown)d of %(total)d rows shown; --max-rows to see more)")
            % {"shown": len(shown), "total": total}
        )
    else:
        lines.append(_("(1 row)") if total == 1 else _("(%(n)d rows)") % {"n": total})
    return lines


def _kv(pairs: list[tuple[str, str]]) -> list[str]:
    pairs = [(k, v) for k, v in pairs if v not in ("", None)]
    if not pairs:
        return []
    w = max(len(k) for k, _v in pairs)
    return [f"  {k + ':':<{w + 1}} {v}" for k, v in pairs]


def _indent(text: str) -> list[str]:
    return ["    " + line for line in text.splitlines()] or ["    "]


def _owner_text(job: Any) -> str:
    if job.owner_id is None:
        return _("(none)")
    if job.owner is None:  # pragma: no cover - deleted between the reads
        return f"#{job.owner_id}"
    return f"{job.owner.get_username()} (id {job.owner_id})"


def _worker_text(job: Any) -> str:
    if job.worker is None:
        return ""
    text = f"{job.worker.name} (#{job.worker_id})"
    if job.backend_pid:
        text += _(", backend pid %(pid)s") % {"pid": job.backend_pid}
    return text


def _result_text(job: Any) -> str:
    if job.fire_and_forget:
        return _("not kept (fire-and-forget)")
    if job.detached:
        return _("dropped (detached)")
    if job.consumed:
        return _("consumed (fetched by result())")
    if job.state != "stopped":
        return ""
    if job.result_columns:
        return _("%(rows)s rows stored (%(size)s), not fetched yet") % {
            "rows": job.result_rows or 0, "size": fmt.size(job.result_bytes)}
    return _("no rows (the last statement returned none)")


def job_lines(job: Any, now: Any) -> list[str]:
    """Everything about one job, in sections, for ``pgbackground show``."""
    title = _("Job %(id)s") % {"id": job.id}
    if job.label:
        title += f" — {job.label}"
    lines = [title, "=" * fmt.width(title)]
    state = job.state
    if state == "running" and job.cancel_requested_at:
        state += " " + _("(cancel requested)")
    timeout = fmt.seconds(job.timeout) if job.timeout else _("none")
    lines += _kv([
        (_("state"), state),
        (_("label"), job.label),
        (_("owner"), _owner_text(job)),
        (_("role"), job.role),
        (_("timeout"), timeout),
        (_("result limit"), fmt.size(job.max_result_bytes)),
        (_("mode"), _("fire-and-forget (submit)") if job.fire_and_forget else _("launch")),
        (_("worker"), _worker_text(job)),
    ])

    lines += ["", _("SQL:"), *_indent(job.sql)]

    lines += ["", _("Settings applied:")]
    if job.gucs:
        w = max(len(k) for k in job.gucs)
        lines += [f"    {k:<{w}} = {v}" for k, v in sorted(job.gucs.items())]
    else:
        lines.append("    " + _("(none: server defaults)"))

    lines += ["", _("Timeline:")]
    end = job.finished_at or (now if job.started_at else None)
    timeline = [
        (_("created"), fmt.moment_precise(job.created_at)),
        (_("started"), fmt.moment_precise(job.started_at)
         + (f"  ({_('queued for')} {fmt.delta(job.created_at, job.started_at)})"
            if job.started_at else "")),
        (_("cancel requested"), fmt.moment_precise(job.cancel_requested_at)),
        (_("cancel deadline"), fmt.moment_precise(job.cancel_deadline)
         if job.cancel_deadline and job.cancel_deadline != job.cancel_requested_at else ""),
        (_("finished"), fmt.moment_precise(job.finished_at)),
        (_("run time"), (fmt.delta(job.started_at, end)
                         + ("" if job.finished_at else " " + _("so far")))
         if job.started_at else ""),
        (_("total"), fmt.delta(job.created_at, job.finished_at)),
    ]
    lines += _kv(timeline)

    if job.progress_at is not None or job.progress_pct is not None:
        pct = "" if job.progress_pct is None else f"{job.progress_pct:.0f}%"
        lines += ["", _("Progress:")]
        lines += _kv([
            (_("done"), pct),
            (_("message"), job.progress_message),
            (_("updated"), fmt.moment_precise(job.progress_at)),
        ])

    notices = job.notices or []
    if notices or job.notices_dropped:
        lines += ["", _("Notices (%(n)d):") % {"n": len(notices) + job.notices_dropped}]
        for n in notices:
            lines += notice_lines(n)
        if job.notices_dropped:
            lines.append(
                _("(%(n)d more notices were not kept: PGBACKGROUND['MAX_NOTICES'])")
                % {"n": job.notices_dropped}
            )

    if job.state in ("error", "canceled") and (job.error_sqlstate or job.error_message):
        lines += ["", _("Error:")]
        lines += error_lines(job.error_sqlstate, job.error_message, job.error_detail,
                             job.error_hint, job.error_context, job.error_position, job.sql)

    if job.state in ("stopped", "error", "canceled"):
        outcome = _kv([
            (_("command tag"), job.command_tag),
            (_("rows"), "" if job.row_count is None else str(job.row_count)),
            (_("result"), _result_text(job)),
        ])
        if job.result_columns:
            w = max(fmt.width(str(c[0])) for c in job.result_columns)
            outcome.append("  " + _("columns:"))
            outcome += [f"    {name:<{w}}  {type_name}"
                        for name, type_name, _oid in job.result_columns]
        if outcome:
            lines += ["", _("Outcome:"), *outcome]
    return lines
