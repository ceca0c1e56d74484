"""The workers page: every ``runworkers`` process, alive or dead by its heartbeat, its slots in
use and the jobs it runs now (only those the viewer may see are named)."""

from __future__ import annotations

import datetime
from typing import Any

from django.contrib import admin
from django.db import connections
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..conf import app_settings
from ..db import models_alias
from ..models import Job
from . import permissions, render, views


class AliveFilter(admin.SimpleListFilter):
    title = gettext_lazy("status")
    parameter_name = "status"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, Any]]:
        return [("alive", gettext_lazy("alive")), ("dead", gettext_lazy("dead or stopped"))]

    def queryset(self, request: Any, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        cutoff = _db_now() - datetime.timedelta(seconds=float(app_settings.WORKER_LOST_AFTER))
        alive = Q(stopped_at__isnull=True, heartbeat_at__gte=cutoff)
        if self.value() == "alive":
            return queryset.filter(alive)
        if self.value() == "dead":
            return queryset.exclude(alive)
        return queryset


def _db_now() -> datetime.datetime:
    with connections[models_alias()].cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


class WorkerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "hostname",
        "pid",
        "status_column",
        "started_column",
        "heartbeat_column",
        "slots_column",
        "jobs_column",
    )
    list_filter = (AliveFilter, "hostname")
    search_fields = ("name", "hostname", "=pid")
    ordering = ("-id",)
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = (
        "name",
        "hostname",
        "pid",
        "concurrency",
        "started_at",
        "heartbeat_at",
        "stopped_at",
        "stop_reason",
    )
    change_list_template = "admin/pgbackground/worker/change_list.html"

    class Media:
        css = {"all": ("pgbackground/admin/pgbackground.css",)}

    def has_module_permission(self, request: HttpRequest) -> bool:
        return permissions.can_use_app(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return permissions.can_use_app(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        running = permissions.visible_jobs(request.user, Job.objects.filter(state="running"))
        return (
            super()
            .get_queryset(request)
            .annotate(busy=Count("jobs", filter=Q(jobs__state="running")))
            .prefetch_related(
                Prefetch(
                    "jobs",
                    queryset=running.only("id", "label", "worker_id", "state").order_by("id"),
                    to_attr="visible_running",
                )
            )
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self._now = _db_now()
        context = {"title": _("Workers"), **views.nav_context(request, "workers")}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        self._now = _db_now()
        return super().change_view(
            request,
            object_id,
            form_url,
            {**(extra_context or {}), **views.nav_context(request, "workers")},
        )

    def _alive(self, w: Any) -> bool:
        now = getattr(self, "_now", None) or _db_now()
        lost = datetime.timedelta(seconds=float(app_settings.WORKER_LOST_AFTER))
        return w.stopped_at is None and w.heartbeat_at >= now - lost

    @admin.display(description=gettext_lazy("status"))
    def status_column(self, w: Any) -> SafeString:
        if self._alive(w):
            return format_html('<span class="pgb-badge pgb-state-running">{}</span>', _("alive"))
        title = w.stop_reason or _("no heartbeat for more than WORKER_LOST_AFTER seconds")
        if w.stopped_at is not None and not (w.stop_reason or "").startswith("lost"):
            return format_html(
                '<span class="pgb-badge pgb-state-queued" title="{}">{}</span>', title, _("stopped")
            )
        return format_html(
            '<span class="pgb-badge pgb-state-error" title="{}">{}</span>', title, _("dead")
        )

    @admin.display(description=gettext_lazy("started"), ordering="started_at")
    def started_column(self, w: Any) -> SafeString:
        return render.when(w.started_at)

    @admin.display(description=gettext_lazy("last heartbeat"), ordering="heartbeat_at")
    def heartbeat_column(self, w: Any) -> SafeString:
        now = getattr(self, "_now", None) or _db_now()
        return format_html(
            '{} <small class="pgb-muted">({})</small>',
            render.when(w.heartbeat_at),
            _("%(t)s ago") % {"t": render.seconds(now - w.heartbeat_at)},
        )

    @admin.display(description=gettext_lazy("slots in use"))
    def slots_column(self, w: Any) -> SafeString:
        busy = getattr(w, "busy", 0)
        pct = 100.0 * busy / w.concurrency if w.concurrency else 0.0
        return format_html(
            '<div class="pgb-slots" title="{} / {}"><div class="pgb-progress pgb-progress-running">'
            '<div class="pgb-progress-fill" style="width: {}%"></div>'
            '<span class="pgb-progress-text">{} / {}</span></div></div>',
            busy,
            w.concurrency,
            f"{pct:.0f}",
            busy,
            w.concurrency,
        )

    @admin.display(description=gettext_lazy("current jobs"))
    def jobs_column(self, w: Any) -> SafeString:
        jobs = getattr(w, "visible_running", [])
        hidden = max(0, getattr(w, "busy", 0) - len(jobs))
        links = format_html_join(
            " ",
            '<a href="{}" class="pgb-job-link">#{}{}</a>',
            (
                (
                    reverse("admin:pgbackground_job_change", args=[j.pk]),
                    j.pk,
                    f" {j.label}" if j.label else "",
                )
                for j in jobs
            ),
        )
        if hidden:
            return format_html(
                '{} <span class="pgb-muted">{}</span>', links, _("+%(n)d not yours") % {"n": hidden}
            )
        return links
