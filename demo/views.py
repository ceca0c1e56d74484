"""The demo's user-facing report page: ``launch()`` in a view, the handle in the session.

1. ``reports`` — a logged-in user picks a report; ``launch_report`` calls
   ``pgbackground.launch(sql, owner=request.user)`` and keeps ``str(handle)`` in the session.
2. ``report_job`` — the page follows the job live over ``ws/pgbackground/jobs/<id>/?cookie=...``
   (the handle is the capability: no permission needed), or polls ``report_status`` when the
   websocket is unavailable; it has a cancel button (``cancel_report``).
3. ``report_result`` — once the job finished, a later request collects the rows with
   ``Handle.parse(...).result()`` (which consumes them: the rendered table is kept in the
   session so that a reload still shows it).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

import pgbackground as pgb
from pgbackground.access import job_status_for

from .reports import REPORTS

SESSION_KEY = "demo_report"
# Rows of a result kept in the session for reloads (the demo's reports have a few dozen).
MAX_KEPT_ROWS = 500

login = login_required(login_url="demo-login")


def _current(request: HttpRequest) -> tuple[pgb.Handle, dict[str, Any]] | None:
    """The handle of the user's report job kept in the session, and the session entry."""
    entry = request.session.get(SESSION_KEY)
    if not isinstance(entry, dict):
        return None
    try:
        return pgb.Handle.parse(entry.get("handle", "")), entry
    except (TypeError, ValueError):
        request.session.pop(SESSION_KEY, None)
        return None


@login
@require_GET
def reports(request: HttpRequest) -> HttpResponse:
    current = _current(request)
    return render(
        request,
        "demo/reports.html",
        {"reports": REPORTS.values(), "current": current[1] if current else None},
    )


@login
@require_POST
def launch_report(request: HttpRequest) -> HttpResponse:
    report = REPORTS.get(request.POST.get("report", ""))
    if report is None:
        messages.error(request, _("Pick one of the reports."))
        return redirect("demo-reports")
    try:
        handle = pgb.launch(report.sql, label=f"demo: {report.title}", owner=request.user)
    except pgb.TooManyJobs:
        messages.error(request, _("You have too many reports running; wait for one to finish."))
        return redirect("demo-reports")
    request.session[SESSION_KEY] = {
        "handle": str(handle),
        "report": report.key,
        "title": str(report.title),
    }
    return redirect("demo-report-job")


@login
@require_GET
def report_job(request: HttpRequest) -> HttpResponse:
    current = _current(request)
    if current is None:
        return redirect("demo-reports")
    handle, entry = current
    return render(
        request,
        "demo/report_job.html",
        {
            "handle": handle,
            "entry": entry,
            "ws_path": f"/ws/pgbackground/jobs/{handle.id}/?cookie={handle.cookie}",
            "status_url": reverse("demo-report-status"),
            "result_url": reverse("demo-report-result"),
            "cancel_url": reverse("demo-report-cancel"),
        },
    )


@login
@require_GET
def report_status(request: HttpRequest) -> JsonResponse:
    """The polling fallback: the same JSON object the websocket's snapshot carries."""
    current = _current(request)
    status = None if current is None else job_status_for(None, current[0].id, current[0].cookie)
    if status is None:
        return JsonResponse({"error": _("no report job")}, status=404)
    return JsonResponse(status)


@login
@require_GET
def report_result(request: HttpRequest) -> HttpResponse:
    """The result table as an HTML fragment (the job page inserts it)."""
    current = _current(request)
    if current is None:
        return HttpResponse(status=404)
    handle, entry = current
    if "table" not in entry:
        try:
            if not handle.result_info().completed:
                return HttpResponse(_("The report is still running."), status=409)
            result = handle.result()
        except pgb.JobError as exc:
            entry["table"] = {"error": f"{exc.sqlstate}: {exc.message}"}
        except pgb.BackgroundError as exc:  # consumed elsewhere, detached, purged
            entry["table"] = {"error": str(exc) or exc.__class__.__name__}
        else:
            rows = [[str(v) if v is not None else "" for v in row] for row in result.rows]
            entry["table"] = {
                "columns": [c.name for c in result.columns],
                "rows": rows[:MAX_KEPT_ROWS],
                "row_count": result.row_count,
            }
        request.session[SESSION_KEY] = entry
    return HttpResponse(render_to_string("demo/_result.html", {"table": entry["table"]}, request))


@login
@require_POST
def cancel_report(request: HttpRequest) -> HttpResponse:
    current = _current(request)
    if current is not None:
        try:
            current[0].cancel()
        except pgb.InvalidHandle:
            request.session.pop(SESSION_KEY, None)
    if request.headers.get("accept", "").startswith("application/json"):
        return JsonResponse({"canceled": current is not None})
    return redirect("demo-report-job" if current is not None else "demo-reports")
