"""Small HTML pieces shared by the list, the job page and the JSON feed (one look everywhere).

Every piece carries ``data-*`` hooks that ``live.js`` updates in place, so a later websocket
client only has to call ``pgbackground.applyJobState(msg)``.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..models import JobState

STATE_TITLES = {
    "queued": gettext_lazy("Waiting for a free worker slot"),
    "running": gettext_lazy("Running on a worker"),
    "stopped": gettext_lazy("Finished successfully"),
    "canceled": gettext_lazy("Canceled before it finished"),
    "error": gettext_lazy("Failed"),
}


def state_label(state: str) -> str:
    return str(JobState(state).label) if state in JobState.values else state


def state_badge(state: str, *, job_id: int | None = None, title: str = "") -> SafeString:
    return format_html(
        '<span class="pgb-badge pgb-state-{}" data-pgb-field="state"{} title="{}">{}</span>',
        state,
        format_html(' data-pgb-job="{}"', job_id) if job_id else "",
        title or STATE_TITLES.get(state, ""),
        state_label(state),
    )


def progress_bar(pct: float | None, message: str, state: str, *, wide: bool = False) -> SafeString:
    """A bar for a job: its reported pct, indeterminate while running without one, full once it
    completed (whatever it last reported), frozen where it stopped otherwise."""
    shown = 100.0 if state == "stopped" else pct
    width = f"{max(0.0, min(100.0, shown)):.1f}" if shown is not None else "0"
    indeterminate = state == "running" and pct is None
    text = f"{shown:.0f}%" if shown is not None else ("…" if state == "running" else "")
    return format_html(
        '<div class="pgb-progress{}{} pgb-progress-{}" data-pgb-field="progress" title="{}"'
        ' role="progressbar" aria-valuemin="0" aria-valuemax="100"{}>'
        '<div class="pgb-progress-fill" style="width: {}%"></div>'
        '<span class="pgb-progress-text">{}</span></div>',
        " pgb-progress-wide" if wide else "",
        " pgb-indeterminate" if indeterminate else "",
        state,
        message,
        format_html(' aria-valuenow="{}"', width) if shown is not None else "",
        width,
        text,
    )


def seconds(value: float | datetime.timedelta | None) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``..."""
    if value is None:
        return ""
    s = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if s < 0:
        s = 0.0
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, r = divmod(int(s), 60)
        return f"{m} min {r:02d} s"
    if s < 86400:
        h, r = divmod(int(s), 3600)
        return f"{h} h {r // 60:02d} min"
    d, r = divmod(int(s), 86400)
    return f"{d} d {r // 3600} h"


def queue_wait(job: Any) -> float | None:
    if job.started_at is None:
        return None
    return (job.started_at - job.created_at).total_seconds()


def run_time(job: Any, now: datetime.datetime | None = None) -> float | None:
    if job.started_at is None:
        return None
    from django.utils import timezone

    end = job.finished_at or (now or timezone.now())
    return (end - job.started_at).total_seconds()


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def psql_notice(n: dict[str, Any]) -> str:
    """A notice as psql prints it: ``INFO:  vacuuming "public.t"`` then DETAIL/HINT/CONTEXT."""
    lines = [f"{n.get('severity') or 'NOTICE'}:  {n.get('message') or ''}"]
    for key, title in (("detail", "DETAIL"), ("hint", "HINT"), ("context", "CONTEXT")):
        if n.get(key):
            lines.append(f"{title}:  {n[key]}")
    return "\n".join(lines)


def sql_with_error_mark(
    sql: str, position: int | None, limit: int
) -> tuple[SafeString, dict[str, int] | None]:
    """The SQL (cut to ``limit`` characters) as HTML, with the token at PostgreSQL's 1-based
    character ``position`` wrapped in ``<mark>``; and the line/column of that position."""
    shown = sql if len(sql) <= limit else sql[:limit]
    if not position or position < 1 or position > len(shown) + 1:
        return format_html("{}", shown), None
    i = position - 1
    j = i
    while j < len(shown) and not shown[j].isspace() and (j == i or shown[j] not in ",;()"):
        j += 1
    line = shown.count("\n", 0, i) + 1
    col = i - (shown.rfind("\n", 0, i) + 1) + 1
    token = shown[i:j] or " "
    html = format_html(
        '{}<mark class="pgb-error-mark" id="pgb-error-position" title="{}">{}</mark>{}',
        shown[:i],
        _("PostgreSQL reports the error here"),
        token,
        shown[j:],
    )
    return html, {"position": position, "line": line, "column": col}


def when(value: datetime.datetime | None, *, field: str = "") -> SafeString:
    """A compact local time (``14:03:12`` today, ``22 Nov 14:03`` this year), full on hover."""
    from django.utils import formats, timezone

    attr = format_html(' data-pgb-field="{}"', field) if field else ""
    if value is None:
        return format_html("<span{}></span>", attr)
    local = timezone.localtime(value)
    today = timezone.localtime().date()
    if local.date() == today:
        short = local.strftime("%H:%M:%S")
    elif local.year == today.year:
        short = formats.date_format(local, "j M") + local.strftime(" %H:%M")
    else:
        short = formats.date_format(local, "j M Y")
    return format_html(
        '<time datetime="{}" title="{}"{}>{}</time>',
        local.isoformat(),
        formats.date_format(local, "DATETIME_FORMAT") + local.strftime(" %Z"),
        attr,
        short,
    )
