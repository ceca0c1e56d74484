"""The admin's pages and data endpoints beyond Django's stock views: the job page's context and
its server-rendered sections (re-fetched by the live page when the job changes state), the
live-state JSON (the polling fallback of the websockets), the CSV export and the stats dashboard.
"""

from __future__ import annotations

import datetime
from typing import Any

from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import get_script_prefix, reverse
from django.utils import timezone
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _

from .. import sqlstates
from ..conf import app_settings
from ..db import models_alias
from ..snapshots import ACTIVE_CONDITION
from . import permissions, render, resultview, services

SQL_DISPLAY_CHARS = 200_000
MAX_POLL_IDS = 200

# Parts of the job page that only the server renders, in page order; each lives in
# ``job/_<name>.html`` inside ``<div id="pgb-slot-<name>">``, and the live page re-fetches those
# that a state change, a cancel request or new notices affect (``<id>/sections/?slots=...``).
JOB_PAGE_SLOTS = ("actions", "summary", "timeline", "error", "sql", "activity", "notices", "result")


def live_ws_path(job_id: int | None = None) -> str:
    """The websocket path of the job feed or of one job, below the site's script prefix."""
    path = f"{get_script_prefix()}ws/pgbackground/jobs/"
    return path if job_id is None else f"{path}{int(job_id)}/"


# --- shared context ----------------------------------------------------------------------------

_LIVE_WORKERS_SQL = """
SELECT count(*) FILTER (WHERE stopped_at IS NULL
                        AND heartbeat_at >= clock_timestamp() - make_interval(secs => %s)),
       coalesce(sum(concurrency) FILTER (WHERE stopped_at IS NULL
                        AND heartbeat_at >= clock_timestamp() - make_interval(secs => %s)), 0),
       (SELECT count(*) FROM (SELECT 1 FROM pgbackground_job WHERE state = 'queued' LIMIT 1000) q)
FROM pgbackground_worker WHERE stopped_at IS NULL
"""


def worker_health() -> dict[str, int]:
    """Live workers (heartbeat within WORKER_LOST_AFTER, by the database's clock), their slots,
    and queued jobs (counted up to 1000)."""
    after = float(app_settings.WORKER_LOST_AFTER)
    with connections[models_alias()].cursor() as cursor:
        cursor.execute(_LIVE_WORKERS_SQL, [after, after])
        live, slots, queued = cursor.fetchone()
    return {"live": int(live), "slots": int(slots), "queued": int(queued)}


def nav_context(request: HttpRequest, active: str) -> dict[str, Any]:
    """What every page of the app shows on top: the tabs and the no-live-worker banner."""
    user = request.user
    health = worker_health()
    return {
        "pgb_active": active,
        "pgb_health": health,
        "pgb_no_live_worker": health["live"] == 0,
        "pgb_can_view": permissions.can_view_own(user),
        "pgb_can_launch": permissions.can_launch(user),
        "pgb_can_view_all": permissions.can_view_all(user),
    }


# --- the job page ------------------------------------------------------------------------------


def _timeline(job: Any) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"key": "queued", "label": _("Queued"), "at": job.created_at}]
    if job.started_at:
        steps.append(
            {
                "key": "started",
                "label": _("Started"),
                "at": job.started_at,
                "delta": _("waited %(t)s") % {"t": render.seconds(render.queue_wait(job))},
            }
        )
    if job.cancel_requested_at:
        steps.append(
            {
                "key": "cancel",
                "label": _("Cancel requested"),
                "at": job.cancel_requested_at,
                "delta": (
                    _("deadline %(t)s")
                    % {"t": timezone.localtime(job.cancel_deadline).strftime("%H:%M:%S")}
                )
                if job.cancel_deadline
                else "",
            }
        )
    if job.finished_at:
        label = {"stopped": _("Finished"), "canceled": _("Canceled"), "error": _("Failed")}.get(
            job.state, _("Finished")
        )
        delta = (
            (_("ran %(t)s") % {"t": render.seconds(render.run_time(job))})
            if job.started_at
            else _("never started")
        )
        steps.append({"key": job.state, "label": label, "at": job.finished_at, "delta": delta})
    elif job.state == "running":
        steps.append(
            {
                "key": "now",
                "label": _("Running"),
                "at": None,
                # The run time ticks in the page (live.js updates data-pgb-field="duration").
                "delta": mark_safe(  # noqa: S308 - the translation is escaped, the time is HTML
                    conditional_escape(_("for %(t)s"))
                    % {
                        "t": format_html(
                            '<span data-pgb-field="duration">{}</span>',
                            render.seconds(render.run_time(job)),
                        )
                    }
                ),
            }
        )
    return steps


_NUMERIC_TYPES = frozenset(
    {"smallint", "integer", "bigint", "numeric", "real", "double precision", "oid", "money"}
)


def _is_numeric(type_name: str) -> bool:
    return (type_name or "").split("(")[0].strip() in _NUMERIC_TYPES


def _result_context(job: Any) -> dict[str, Any]:
    cols = resultview.columns(job)
    ctx: dict[str, Any] = {"columns": cols, "rows": [], "available": False, "reason": ""}
    if job.state in ("queued", "running"):
        ctx["reason"] = _("The result is stored when the job finishes.")
    elif job.state != "stopped":
        ctx["reason"] = _("A failed or canceled job has no result.")
    elif job.fire_and_forget:
        ctx["reason"] = _("Submitted fire-and-forget: no result rows are kept.")
    elif job.detached:
        ctx["reason"] = _("Detached: its result was dropped.")
    elif job.consumed:
        ctx["reason"] = _(
            "The result was fetched through its handle (result()); its rows are no longer stored."
        )
    elif not cols:
        ctx["reason"] = _("The SQL returned no rows to keep (last command: %(tag)s).") % {
            "tag": job.command_tag or "—"
        }
    elif not job.result_rows:
        ctx["available"] = True
        ctx["reason"] = _("The query returned no rows.")
    else:
        numeric = [_is_numeric(c.type_name) for c in cols]
        ctx["rows"] = [list(zip(row, numeric, strict=False)) for row in resultview.preview(job)]
        ctx["available"] = bool(ctx["rows"])
        if not ctx["rows"]:
            ctx["reason"] = _("The rows are no longer stored (RESULT_RETENTION).")
    ctx["truncated"] = bool(job.result_rows and len(ctx["rows"]) < job.result_rows)
    return ctx


def job_page_context(model_admin: Any, request: HttpRequest, job: Any) -> dict[str, Any]:
    user = request.user
    sql_html, position = render.sql_with_error_mark(job.sql, job.error_position, SQL_DISPLAY_CHARS)
    error = None
    if job.state in ("error", "canceled") and (job.error_message or job.error_sqlstate):
        error = {
            "sqlstate": job.error_sqlstate,
            "condition": sqlstates.condition_name(job.error_sqlstate),
            "class": sqlstates.class_name(job.error_sqlstate),
            "message": job.error_message,
            "detail": job.error_detail,
            "hint": job.error_hint,
            "context": job.error_context,
            "position": position,
        }
    prefix = f"admin:{model_admin.opts.app_label}_{model_admin.opts.model_name}"
    can_act = permissions.can_act_on_job(user, job)
    return {
        "title": _("Job #%(id)s") % {"id": job.pk} + (f" · {job.label}" if job.label else ""),
        "subtitle": None,
        "opts": model_admin.opts,
        "original": job,
        "job": job,
        "has_view_permission": True,
        "media": model_admin.media,
        "sql_html": sql_html,
        "sql_cut": len(job.sql) > SQL_DISPLAY_CHARS,
        "sql_length": len(job.sql),
        "error": error,
        "notices": [
            {"severity": (n.get("severity") or "NOTICE").upper(), "text": render.psql_notice(n)}
            for n in (job.notices or [])
        ],
        "gucs": sorted((job.gucs or {}).items(), key=lambda kv: kv[0].lower()),
        "timeline": _timeline(job),
        "result": _result_context(job),
        "activity": services.job_activity(job, with_queries=permissions.can_view_all(user)),
        "badge": render.state_badge(job.state, job_id=job.pk),
        "progress": render.progress_bar(
            job.progress_pct, job.progress_message, job.state, wide=True
        ),
        "run_time": render.seconds(render.run_time(job)),
        "queue_wait": render.seconds(render.queue_wait(job)),
        "result_size": render.size(job.result_bytes),
        "limit_size": render.size(job.max_result_bytes),
        "timeout_text": render.seconds(job.timeout) if job.timeout else _("none"),
        "is_active": job.state in ("queued", "running"),
        "show_progress": job.progress_pct is not None
        or job.state in ("queued", "running", "stopped"),
        "notices_count": len(job.notices or []) + int(job.notices_dropped),
        "ws_path": live_ws_path(job.pk),
        "can_act": can_act,
        "can_cancel": can_act and job.state in ("queued", "running"),
        "can_detach": can_act
        and not job.detached
        and (
            job.state in ("queued", "running")
            or (job.state == "stopped" and not job.consumed and not job.fire_and_forget)
        ),
        "can_relaunch": model_admin.has_relaunch_permission(request),
        "urls": {
            "state": reverse(f"{prefix}_state", args=[job.pk]),
            "sections": reverse(f"{prefix}_sections", args=[job.pk]),
            "csv": reverse(f"{prefix}_csv", args=[job.pk]),
            "cancel": reverse(f"{prefix}_cancel", args=[job.pk]),
            "detach": reverse(f"{prefix}_detach", args=[job.pk]),
            "relaunch": reverse(f"{prefix}_relaunch", args=[job.pk]),
            "edit_copy": reverse(f"{prefix}_add") + f"?from={job.pk}",
            "list": reverse(f"{prefix}_changelist"),
            "history": reverse(f"{prefix}_history", args=[job.pk]),
        },
    }


# --- live state (JSON) ---------------------------------------------------------------------------


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_state(job: Any) -> dict[str, Any]:
    """A job's current state as JSON, in the shape of the websocket messages (id, state, pct,
    message) plus timings and counters; what ``live.js`` applies to the page."""
    run = render.run_time(job)
    wait = render.queue_wait(job)
    loaded = job.__dict__  # what the query read (the list's polling defers the big columns)
    notices = job.notices if "notices" in loaded else None
    worker = job.worker if loaded.get("worker_id") else None
    return {
        "id": job.pk,
        "state": job.state,
        "state_label": render.state_label(job.state),
        "terminal": job.state in services.FINISHED,
        "pct": job.progress_pct,
        "message": job.progress_message,
        "progress_at": _iso(job.progress_at) if "progress_at" in loaded else None,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "run_seconds": run,
        "duration": None if run is None else round(run, 3),  # as in the websocket messages
        "wait_seconds": wait,
        "run_time": render.seconds(run),
        "queue_wait": render.seconds(wait),
        "notices_count": None if notices is None else len(notices) + int(job.notices_dropped),
        "row_count": job.row_count,
        "command_tag": job.command_tag,
        "error_sqlstate": job.error_sqlstate or None,
        "error_condition": sqlstates.condition_name(job.error_sqlstate) or None,
        "error": {"sqlstate": job.error_sqlstate, "message": job.error_message[:500]}
        if job.error_sqlstate and "error_message" in loaded
        else None,
        "worker": f"{worker.hostname}:{worker.pid}" if worker else "",
        "cancel_requested": job.cancel_requested_at is not None,
        "detached": job.detached,
        "seq": job.event_seq if "event_seq" in loaded else None,
    }


def job_state_response(model_admin: Any, request: HttpRequest, job: Any) -> HttpResponse:
    data = job_state(job)
    act = services.job_activity(job, with_queries=permissions.can_view_all(request.user))
    data["activity"] = (
        None
        if act is None
        else {
            "state": act.state,
            "wait_event_type": act.wait_event_type,
            "wait_event": act.wait_event,
            "blocking_pids": act.blocking_pids,
        }
    )
    return JsonResponse(data, headers={"Cache-Control": "no-store"})


_STATE_FIELDS = (
    "id",
    "state",
    "owner_id",
    "progress_pct",
    "progress_message",
    "created_at",
    "started_at",
    "finished_at",
    "row_count",
    "command_tag",
    "error_sqlstate",
    "error_message",
    "cancel_requested_at",
    "detached",
    "event_seq",
    "worker",
    "worker__hostname",
    "worker__pid",
)


def job_states_response(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """``?ids=1,2,3``: the states of those jobs the user may see (others are left out)."""
    raw = request.GET.get("ids", "")
    ids = [int(p) for p in raw.split(",") if p.strip().isdigit()][:MAX_POLL_IDS]
    jobs = (
        model_admin.get_queryset(request)
        .filter(pk__in=ids)
        .select_related("worker")
        .only(*_STATE_FIELDS)
    )
    return JsonResponse(
        {"jobs": [job_state(j) for j in jobs]}, headers={"Cache-Control": "no-store"}
    )


def job_sections_response(model_admin: Any, request: HttpRequest, job: Any) -> HttpResponse:
    """``?slots=a,b``: those server-rendered parts of the job page (all when omitted), each in a
    ``<div data-pgb-slot="name">`` that the live page swaps into its own slot."""
    asked = [s for s in request.GET.get("slots", "").split(",") if s in JOB_PAGE_SLOTS]
    names = [s for s in JOB_PAGE_SLOTS if s in asked] or list(JOB_PAGE_SLOTS)
    context = {
        **job_page_context(model_admin, request, job),
        "slots": [(n, f"admin/pgbackground/job/_{n}.html") for n in names],
    }
    return TemplateResponse(
        request,
        "admin/pgbackground/job/sections.html",
        context,
        headers={"Cache-Control": "no-store"},
    )


# --- CSV ---------------------------------------------------------------------------------------


def job_csv_response(request: HttpRequest, job: Any) -> HttpResponseBase:
    """The whole stored result as CSV, streamed; the result stays unconsumed."""
    if not resultview.result_available(job):
        raise Http404(_("This job has no stored result to download."))
    response = StreamingHttpResponse(
        resultview.csv_lines(job.pk, resultview.columns(job)),
        content_type="text/csv; charset=utf-8",
    )
    name = f"pgbackground-job-{job.pk}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


# --- stats dashboard ---------------------------------------------------------------------------

WINDOWS = {
    "1h": (datetime.timedelta(hours=1), "1 hour"),
    "24h": (datetime.timedelta(hours=24), "24 hours"),
    "7d": (datetime.timedelta(days=7), "7 days"),
    "30d": (datetime.timedelta(days=30), "30 days"),
}

_TIMINGS_SQL = """
SELECT GROUPING(owner_id) AS overall, owner_id, count(*),
       count(*) FILTER (WHERE state = 'stopped'), count(*) FILTER (WHERE state = 'error'),
       count(*) FILTER (WHERE state = 'canceled'),
       avg(run) * 1000, percentile_cont(0.95) WITHIN GROUP (ORDER BY run) * 1000, max(run) * 1000,
       avg(wait) * 1000, percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) * 1000
FROM (
    SELECT owner_id, state,
           extract(epoch FROM finished_at - started_at)::float8 AS run,
           extract(epoch FROM started_at - created_at)::float8 AS wait
    FROM pgbackground_job
    WHERE state IN ('stopped', 'canceled', 'error')
      AND finished_at >= now() - %(window)s
      AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)
) t
GROUP BY ROLLUP (owner_id)
ORDER BY GROUPING(owner_id) DESC, count(*) DESC
LIMIT 51
"""

_ACTIVE_SQL = f"""
SELECT owner_id, count(*) FILTER (WHERE state = 'queued'),
       count(*) FILTER (WHERE state = 'running'),
       min(created_at) FILTER (WHERE state = 'queued')
FROM pgbackground_job
WHERE {ACTIVE_CONDITION} AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)
GROUP BY owner_id
"""

# One index range probe per bucket (LATERAL), whatever the size of the table.
_THROUGHPUT_SQL = """
SELECT b.lo, l.launched, f.ok, f.failed, f.canceled
FROM unnest(%(starts)s::timestamptz[]) AS b(lo)
CROSS JOIN LATERAL (
    SELECT count(*) AS launched FROM pgbackground_job j
    WHERE j.created_at >= b.lo AND j.created_at < b.lo + %(step)s
      AND (%(owner)s::bigint IS NULL OR j.owner_id = %(owner)s)) l
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.state = 'stopped') AS ok,
           count(*) FILTER (WHERE j.state = 'error') AS failed,
           count(*) FILTER (WHERE j.state = 'canceled') AS canceled
    FROM pgbackground_job j
    WHERE j.state IN ('stopped', 'canceled', 'error')
      AND j.finished_at >= b.lo AND j.finished_at < b.lo + %(step)s
      AND (%(owner)s::bigint IS NULL OR j.owner_id = %(owner)s)) f
ORDER BY b.lo
"""

CHART_W, CHART_H, CHART_PAD_L, CHART_PAD_B = 720, 170, 40, 22


def _chart(rows: list[tuple[Any, ...]], label_every: int, fmt: str) -> dict[str, Any]:
    """Stacked bars (completed / failed / canceled) and a line of launched jobs, as SVG numbers."""
    n = max(1, len(rows))
    peak = max([1] + [max(r[1], r[2] + r[3] + r[4]) for r in rows])
    inner_w, inner_h = CHART_W - CHART_PAD_L - 8, CHART_H - CHART_PAD_B - 8
    slot = inner_w / n
    bars, points, labels = [], [], []
    for i, (lo, launched, ok, failed, canceled) in enumerate(rows):
        x = CHART_PAD_L + i * slot
        y = CHART_H - CHART_PAD_B
        segments = []
        for value, cls in ((ok, "ok"), (failed, "failed"), (canceled, "canceled")):
            if value:
                h = value / peak * inner_h
                y -= h
                segments.append({"y": round(y, 1), "h": round(h, 1), "cls": cls})
        local = timezone.localtime(lo)
        title = (
            f"{local.strftime(fmt)} — {_('launched')} {launched}, {_('completed')} {ok}, "
            f"{_('failed')} {failed}, {_('canceled')} {canceled}"
        )
        bars.append(
            {
                "x": round(x + slot * 0.12, 1),
                "w": round(max(1.0, slot * 0.76), 1),
                "segments": segments,
                "title": title,
                "total": ok + failed + canceled,
                "hx": round(x, 1),
                "hw": round(slot, 1),
            }
        )
        points.append(f"{x + slot / 2:.1f},{CHART_H - CHART_PAD_B - launched / peak * inner_h:.1f}")
        if i % label_every == 0:
            labels.append({"x": round(x + slot / 2, 1), "text": local.strftime(fmt)})
    ticks = [
        {"y": round(CHART_H - CHART_PAD_B - f * inner_h, 1), "value": round(peak * f)}
        for f in (0, 0.5, 1)
    ]
    return {
        "w": CHART_W,
        "h": CHART_H,
        "bars": bars,
        "line": " ".join(points),
        "labels": labels,
        "ticks": ticks,
        "left": CHART_PAD_L,
        "right": CHART_W - 8,
        "base": CHART_H - CHART_PAD_B,
        "total": sum(b["total"] for b in bars),
        "launched": sum(r[1] for r in rows),
    }


def _buckets(step: datetime.timedelta, n: int, owner_pk: Any) -> dict[str, Any]:
    """Parameters of the throughput query: ``n`` bucket starts ending with the current one.

    Passed as a constant array so that PostgreSQL knows there are ``n`` (a generate_series it
    would guess at 1000, and the cost would trigger JIT compilation for a 1 ms query)."""
    now = timezone.now()
    last = now - datetime.timedelta(seconds=now.timestamp() % step.total_seconds())
    return {
        "starts": [last - step * i for i in range(n - 1, -1, -1)],
        "step": step,
        "owner": owner_pk,
    }


def _ms(value: float | None) -> str:
    return "—" if value is None else render.seconds(value / 1000)


def stats_page(model_admin: Any, request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import get_user_model

    from ..jobstats import stats

    user = request.user
    see_all = permissions.can_view_all(user)
    owner = None if see_all else user
    owner_pk = None if see_all else user.pk
    window_key = request.GET.get("window", "24h")
    if window_key not in WINDOWS:
        window_key = "24h"
    window = WINDOWS[window_key][0]

    totals = stats(owner=owner)
    params: dict[str, Any] = {"window": window, "owner": owner_pk}
    minute = _buckets(datetime.timedelta(minutes=1), 60, owner_pk)
    hourly = _buckets(datetime.timedelta(hours=1), 24, owner_pk)
    with connections[models_alias()].cursor() as cursor:
        cursor.execute(_TIMINGS_SQL, params)
        timing_rows = cursor.fetchall()
        cursor.execute(_ACTIVE_SQL, {"owner": owner_pk})
        active_rows = cursor.fetchall()
        cursor.execute(_THROUGHPUT_SQL, minute)
        hour = cursor.fetchall()
        cursor.execute(_THROUGHPUT_SQL, hourly)
        day = cursor.fetchall()

    active = {r[0]: r for r in active_rows}
    owner_ids = {r[1] for r in timing_rows if not r[0]} | set(active)
    users = {
        u.pk: u.get_username()
        for u in get_user_model()._default_manager.filter(pk__in=[i for i in owner_ids if i])
    }
    overall = None
    per_owner = []
    for r in timing_rows:
        row = {
            "owner_id": r[1],
            "owner": users.get(r[1], _("(no owner)") if r[1] is None else r[1]),
            "finished": r[2],
            "completed": r[3],
            "failed": r[4],
            "canceled": r[5],
            "avg_run": _ms(r[6]),
            "p95_run": _ms(r[7]),
            "max_run": _ms(r[8]),
            "avg_wait": _ms(r[9]),
            "p95_wait": _ms(r[10]),
            "queued": active.get(r[1], (0, 0, 0))[1]
            if not r[0]
            else sum(a[1] for a in active_rows),
            "running": active.get(r[1], (0, 0, 0, None))[2]
            if not r[0]
            else sum(a[2] for a in active_rows),
        }
        if r[0]:
            overall = row
        else:
            per_owner.append(row)
    seen = {r["owner_id"] for r in per_owner}
    for owner_id, queued, running, _oldest in active_rows:
        if owner_id not in seen:
            per_owner.append(
                {
                    "owner_id": owner_id,
                    "owner": users.get(owner_id, _("(no owner)") if owner_id is None else owner_id),
                    "finished": 0,
                    "completed": 0,
                    "failed": 0,
                    "canceled": 0,
                    "avg_run": "—",
                    "p95_run": "—",
                    "max_run": "—",
                    "avg_wait": "—",
                    "p95_wait": "—",
                    "queued": queued,
                    "running": running,
                }
            )
    oldest = min((a[3] for a in active_rows if a[3]), default=None)
    context = {
        **model_admin.admin_site.each_context(request),
        **nav_context(request, "stats"),
        "title": _("Background job statistics"),
        "opts": model_admin.opts,
        "media": model_admin.media,
        "see_all": see_all,
        "totals": totals,
        "avg_execution": _ms(totals.avg_execution_ms),
        "windows": [(k, v[1]) for k, v in WINDOWS.items()],
        "window_key": window_key,
        "window_label": WINDOWS[window_key][1],
        "overall": overall,
        "per_owner": per_owner if see_all else [],
        "oldest_queued": render.seconds(timezone.now() - oldest) if oldest else "",
        "chart_hour": _chart(hour, 10, "%H:%M"),
        "chart_day": _chart(day, 3, "%H:00"),
        "list_url": reverse("admin:pgbackground_job_changelist"),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/pgbackground/stats.html", context)
