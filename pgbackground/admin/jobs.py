"""The Job admin: the list, the read-only job page, the launch form (its add view), the job
buttons and the bulk actions. Views that are pages of their own live in :mod:`.views`."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import F, QuerySet
from django.db.models.functions import Left
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from .. import sqlstates
from ..exceptions import TooManyJobs
from ..models import Job
from . import filters, paging, permissions, render, services, views
from .forms import GraceForm, JobActionForm, LaunchForm

SQL_PREVIEW_CHARS = 120

# Columns the list reads; everything else (the SQL, notices, settings...) stays in the table.
LIST_COLUMNS = (
    "id",
    "label",
    "state",
    "owner_id",
    "created_at",
    "started_at",
    "finished_at",
    "worker_id",
    "progress_pct",
    "progress_message",
    "row_count",
    "command_tag",
    "error_sqlstate",
    "cancel_requested_at",
    "detached",
    "fire_and_forget",
    "consumed",
    "owner__username",
    "worker__name",
    "worker__hostname",
    "worker__pid",
)


class JobChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        qs = super().get_queryset(request, exclude_parameters)
        return qs.only(*LIST_COLUMNS).annotate(sql_preview=Left("sql", SQL_PREVIEW_CHARS + 1))

    def get_results(self, request: HttpRequest) -> None:
        """Django's, but the page's rows are read by id once the page's ids are known.

        - A list that fits on one page: the paginator's count found its ids already, so the
          filter (a text search, say) does not run over the table a second time.
        - A page of a longer list: its ids are sorted and cut first, then its rows read. Sorting
          narrow rows is what makes a sort by a column without an index affordable at a million
          jobs (by owner: 560 -> 270 ms a request); the SQL preview and the other columns are
          computed for 50 rows instead of every row.
        """
        super().get_results(request)
        ids: list[Any] | None
        if self.multi_page:
            if self.show_all and self.can_show_all:
                return
            ids = list(self.result_list.values_list("pk", flat=True))
        else:
            ids = getattr(self.paginator, "one_page_ids", None)
            if ids is None:
                return
        # In the list's order again (50 rows); an empty list runs no query at all.
        self.result_list = self.queryset.filter(pk__in=ids)


class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "label_column",
        "state_column",
        "progress_column",
        "owner_column",
        "sql_column",
        "created_column",
        "started_column",
        "finished_column",
        "duration_column",
        "wait_column",
        "rows_column",
        "command_tag",
        "worker_column",
    )
    list_display_links = ("id",)
    list_filter = (
        filters.StateFilter,
        filters.OwnerFilter,
        filters.LabelFilter,
        ("created_at", admin.DateFieldListFilter),
        ("finished_at", admin.DateFieldListFilter),
        filters.FlagsFilter,
    )
    search_fields = ("label", "sql", "error_message", "=error_sqlstate")
    search_help_text = gettext_lazy(
        "Search SQL, label, error message, SQLSTATE or condition name (e.g. 22012 or "
        "division_by_zero); #123 finds job 123."
    )
    date_hierarchy = "created_at"
    ordering = ("-id",)
    sortable_by = (
        "id",
        "label_column",
        "state_column",
        "owner_column",
        "created_column",
        "started_column",
        "finished_column",
        "duration_column",
        "wait_column",
        "rows_column",
        "command_tag",
    )
    list_select_related = ("owner", "worker")
    list_per_page = 50
    list_max_show_all = 500
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = paging.EstimatedCountPaginator
    action_form = JobActionForm
    actions = (
        "cancel_selected",
        "cancel_with_grace",
        "detach_selected",
        "relaunch_selected",
        "delete_finished",
    )
    change_list_template = "admin/pgbackground/job/change_list.html"

    class Media:
        css = {"all": ("pgbackground/admin/pgbackground.css",)}
        # The websocket client first; the admin's page logic (live.js of the admin) uses it.
        js = ("pgbackground/live.js", "pgbackground/admin/live.js")

    # --- permissions -----------------------------------------------------------------------

    def has_module_permission(self, request: HttpRequest) -> bool:
        return permissions.can_use_app(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return permissions.can_view_own(request.user)
        return permissions.can_view_job(request.user, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return permissions.can_launch(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # nobody edits a job after launch

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # only finished jobs go, through the "delete finished" action

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return permissions.can_view_own(request.user)

    def has_relaunch_permission(self, request: HttpRequest) -> bool:
        return permissions.can_launch(request.user) and permissions.can_view_own(request.user)

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return permissions.can_delete(request.user) and permissions.can_view_own(request.user)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return permissions.visible_jobs(request.user, super().get_queryset(request))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(pk=int(term[1:])), False
        code = next((c for c, n in sqlstates.CONDITIONS.items() if n == term.lower()), None)
        if code is not None:
            return queryset.filter(error_sqlstate=code), False
        qs, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if term.isdigit() and len(term) < 19:
            qs = qs | queryset.filter(pk=int(term))
        return qs, may_have_duplicates

    # --- list columns ------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("label"), ordering="label")
    def label_column(self, job: Job) -> str:
        return job.label

    @admin.display(description=gettext_lazy("state"), ordering="state")
    def state_column(self, job: Job) -> SafeString:
        title = ""
        if job.state in ("error", "canceled") and job.error_sqlstate:
            title = sqlstates.describe(job.error_sqlstate)
        badge = render.state_badge(job.state, job_id=job.pk, title=title)
        extra = ""
        if job.cancel_requested_at and job.state in ("queued", "running"):
            extra = format_html(
                ' <span class="pgb-flag" title="{}">⏹</span>', _("cancel requested")
            )
        elif job.detached:
            extra = format_html(' <span class="pgb-flag" title="{}">⇢</span>', _("detached"))
        return format_html("{}{}", badge, extra)

    @admin.display(description=gettext_lazy("progress"))
    def progress_column(self, job: Job) -> SafeString:
        if job.progress_pct is None and job.state in ("error", "canceled"):
            return mark_safe('<span class="pgb-muted" data-pgb-field="progress">—</span>')
        return render.progress_bar(job.progress_pct, job.progress_message, job.state)

    @admin.display(description=gettext_lazy("owner"), ordering="owner__username")
    def owner_column(self, job: Job) -> str:
        return job.owner.get_username() if job.owner_id and job.owner else "—"

    @admin.display(description=gettext_lazy("SQL"))
    def sql_column(self, job: Job) -> SafeString:
        text = " ".join(getattr(job, "sql_preview", "").split())
        if len(text) > SQL_PREVIEW_CHARS:
            text = text[:SQL_PREVIEW_CHARS] + "…"
        return format_html('<code class="pgb-sql-preview">{}</code>', text)

    @admin.display(description=gettext_lazy("created"), ordering="created_at")
    def created_column(self, job: Job) -> SafeString:
        return render.when(job.created_at)

    @admin.display(description=gettext_lazy("started"), ordering="started_at")
    def started_column(self, job: Job) -> SafeString:
        return render.when(job.started_at, field="started")

    @admin.display(description=gettext_lazy("finished"), ordering="finished_at")
    def finished_column(self, job: Job) -> SafeString:
        return render.when(job.finished_at, field="finished")

    @admin.display(
        description=gettext_lazy("run time"), ordering=F("finished_at") - F("started_at")
    )
    def duration_column(self, job: Job) -> SafeString:
        return format_html(
            '<span data-pgb-field="duration">{}</span>', render.seconds(render.run_time(job))
        )

    @admin.display(
        description=gettext_lazy("queue wait"), ordering=F("started_at") - F("created_at")
    )
    def wait_column(self, job: Job) -> SafeString:
        return format_html(
            '<span data-pgb-field="queue_wait">{}</span>', render.seconds(render.queue_wait(job))
        )

    @admin.display(description=gettext_lazy("rows"), ordering="row_count")
    def rows_column(self, job: Job) -> SafeString:
        rows = "" if job.row_count is None else f"{job.row_count:,}"
        return format_html('<span data-pgb-field="rows">{}</span>', rows)

    @admin.display(description=gettext_lazy("worker"))
    def worker_column(self, job: Job) -> SafeString:
        w = job.worker if job.worker_id else None
        return format_html(
            '<span data-pgb-field="worker">{}</span>', f"{w.hostname}:{w.pid}" if w else ""
        )

    # --- bulk actions ------------------------------------------------------------------------

    def _actionable_ids(
        self, request: HttpRequest, queryset: QuerySet[Any], *states: str
    ) -> list[int]:
        qs = permissions.actionable_jobs(
            request.user, queryset.model.objects.filter(pk__in=queryset.order_by().values("pk"))
        )
        if states:
            qs = qs.filter(state__in=states)
        return list(qs.order_by().values_list("pk", flat=True))

    def _skipped(self, request: HttpRequest, selected: int, done: int) -> None:
        if selected > done:
            self.message_user(
                request,
                ngettext(
                    "%(n)d selected job was left alone (finished, not yours, or already so).",
                    "%(n)d selected jobs were left alone (finished, not yours, or already so).",
                    selected - done,
                )
                % {"n": selected - done},
                messages.INFO,
            )

    @admin.action(description=gettext_lazy("Cancel"), permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._cancel(request, queryset, 0.0)

    @admin.action(
        description=gettext_lazy("Cancel with grace (seconds →)"),
        permissions=["cancel"],
    )
    def cancel_with_grace(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        form = GraceForm(request.POST)
        if not form.is_valid():
            self.message_user(request, _("Grace must be a number of seconds ≥ 0."), messages.ERROR)
            return
        self._cancel(request, queryset, form.grace_seconds())

    def _cancel(self, request: HttpRequest, queryset: QuerySet[Any], grace: float) -> None:
        selected = queryset.count()
        ids = self._actionable_ids(request, queryset, "queued", "running")
        done = services.cancel_jobs(ids, grace)
        self.message_user(
            request,
            ngettext(
                "Cancel requested for %(n)d job.", "Cancel requested for %(n)d jobs.", len(done)
            )
            % {"n": len(done)}
            + (f" ({_('grace')} {render.seconds(grace)})" if grace else ""),
            messages.SUCCESS if done else messages.WARNING,
        )
        self._skipped(request, selected, len(done))

    @admin.action(
        description=gettext_lazy("Detach (keep running, drop result)"),
        permissions=["cancel"],
    )
    def detach_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        selected = queryset.count()
        ids = self._actionable_ids(request, queryset)
        done = services.detach_jobs(ids)
        self.message_user(
            request,
            ngettext("Detached %(n)d job.", "Detached %(n)d jobs.", len(done)) % {"n": len(done)},
            messages.SUCCESS if done else messages.WARNING,
        )
        self._skipped(request, selected, len(done))

    @admin.action(description=gettext_lazy("Launch again"), permissions=["relaunch"])
    def relaunch_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:1000])
        jobs = list(self.get_queryset(request).filter(pk__in=ids).order_by("pk"))
        outcome = services.relaunch(jobs, request.user)
        if outcome.launched:
            self.message_user(
                request,
                ngettext(
                    "Launched %(n)d new job: %(ids)s.",
                    "Launched %(n)d new jobs: %(ids)s.",
                    len(outcome.launched),
                )
                % {"n": len(outcome.launched), "ids": ", ".join(f"#{i}" for i in outcome.launched)},
                messages.SUCCESS,
            )
        for job_id, error in outcome.errors:
            self.message_user(
                request,
                _("Job #%(id)s not launched again: %(error)s") % {"id": job_id, "error": error},
                messages.ERROR,
            )

    @admin.action(
        description=gettext_lazy("Delete finished jobs"),
        permissions=["purge"],
    )
    def delete_finished(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        selected = queryset.count()
        ids = self._actionable_ids(request, queryset, *services.FINISHED)
        n = services.delete_finished(ids)
        self.message_user(
            request,
            ngettext("Deleted %(n)d finished job.", "Deleted %(n)d finished jobs.", n) % {"n": n},
            messages.SUCCESS if n else messages.WARNING,
        )
        self._skipped(request, selected, n)

    # --- pages -------------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("stats/", wrap(self.stats_view), name=f"{prefix}_stats"),
            path("states/", wrap(self.states_view), name=f"{prefix}_states"),
            path("<int:job_id>/state/", wrap(self.state_view), name=f"{prefix}_state"),
            path("<int:job_id>/sections/", wrap(self.sections_view), name=f"{prefix}_sections"),
            path("<int:job_id>/csv/", wrap(self.csv_view), name=f"{prefix}_csv"),
            path("<int:job_id>/cancel/", wrap(self.cancel_view), name=f"{prefix}_cancel"),
            path("<int:job_id>/detach/", wrap(self.detach_view), name=f"{prefix}_detach"),
            path("<int:job_id>/relaunch/", wrap(self.relaunch_view), name=f"{prefix}_relaunch"),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            "title": _("Background jobs"),
            **views.nav_context(request, "jobs"),
            "pgb_feed_ws": views.live_ws_path(),
        }
        return super().changelist_view(request, {**context, **(extra_context or {})})

    def _job_or_404(self, request: HttpRequest, job_id: int) -> Job:
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = self.get_queryset(request).filter(pk=job_id).first()
        if job is None:
            from django.http import Http404

            raise Http404(_("No such job, or not yours to see."))
        return job

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        job = self.get_object(request, unquote(object_id))
        if job is None:
            return self._missing(request, object_id)
        context = {
            **self.admin_site.each_context(request),
            **views.nav_context(request, "job"),
            **views.job_page_context(self, request, job),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/pgbackground/job/detail.html", context)

    def _missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Like Django's "doesn't exist" redirect: the same for a missing job and for another
        user's job, so the page never tells whether a job exists."""
        self.message_user(
            request,
            _("Job with ID “%(key)s” does not exist or is not yours to see.") % {"key": object_id},
            messages.WARNING,
        )
        return HttpResponseRedirect(reverse("admin:index", current_app=self.admin_site.name))

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = LaunchForm(request.POST)
            if form.is_valid():
                job_id = self._launch(request, form)
                if job_id is not None:
                    return self._after_launch(request, job_id)
        else:
            form = LaunchForm(initial=self._initial_from(request))
        context = {
            **self.admin_site.each_context(request),
            **views.nav_context(request, "launch"),
            "title": _("Launch a background job"),
            "opts": self.opts,
            "form": form,
            "media": self.media + form.media,
            "has_view_permission": self.has_view_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/pgbackground/job/launch.html", context)

    def _initial_from(self, request: HttpRequest) -> dict[str, Any]:
        """``?from=<id>`` pre-fills the form with a visible job's SQL and settings."""
        source = request.GET.get("from", "")
        if not source.isdigit():
            return {}
        job = self.get_queryset(request).filter(pk=int(source)).first()
        if job is None:
            return {}
        return {
            "sql": job.sql,
            "label": job.label,
            "timeout": job.timeout,
            "max_result_bytes": job.max_result_bytes,
            "fire_and_forget": job.fire_and_forget,
        }

    def _launch(self, request: HttpRequest, form: LaunchForm) -> int | None:
        from .. import launcher

        data = form.cleaned_data
        try:
            h = launcher.launch(
                data["sql"],
                label=data["label"] or None,
                timeout=data["timeout"],
                gucs=data["gucs"] or None,
                owner=request.user,
                max_result_bytes=data["max_result_bytes"],
                fire_and_forget=bool(data["fire_and_forget"]),
            )
        except TooManyJobs as exc:
            form.add_error(None, str(exc))
            return None
        except (TypeError, ValueError) as exc:
            form.add_error(
                "gucs" if "gucs" in str(exc) or "setting" in str(exc) else None, str(exc)
            )
            return None
        return h.id

    def _after_launch(self, request: HttpRequest, job_id: int) -> HttpResponse:
        self.message_user(request, _("Job #%(id)s launched.") % {"id": job_id}, messages.SUCCESS)
        if self.has_view_permission(request):
            return HttpResponseRedirect(self._job_url(job_id))
        return HttpResponseRedirect(reverse("admin:pgbackground_job_add"))

    def _job_url(self, job_id: int) -> str:
        return reverse(
            "admin:pgbackground_job_change", args=[job_id], current_app=self.admin_site.name
        )

    # --- job buttons (POST) ------------------------------------------------------------------

    def _act(self, request: HttpRequest, job_id: int) -> Job:
        job = self._job_or_404(request, job_id)
        if not permissions.can_act_on_job(request.user, job):
            raise PermissionDenied
        return job

    @staticmethod
    def _post_only(request: HttpRequest) -> HttpResponse | None:
        if request.method != "POST":
            from django.http import HttpResponseNotAllowed

            return HttpResponseNotAllowed(["POST"])
        return None

    def cancel_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if (bad := self._post_only(request)) is not None:
            return bad
        job = self._act(request, job_id)
        form = GraceForm(request.POST)
        if not form.is_valid():
            self.message_user(request, _("Grace must be a number of seconds ≥ 0."), messages.ERROR)
            return HttpResponseRedirect(self._job_url(job.pk))
        grace = form.grace_seconds()
        done = services.cancel_jobs([job.pk], grace)
        if done:
            self.log_change(
                request, job, _("Canceled") + (f" (grace {grace:g} s)" if grace else "")
            )
            msg = (
                (
                    _("Cancel requested: job #%(id)s may run %(grace)s more.")
                    % {"id": job.pk, "grace": render.seconds(grace)}
                )
                if grace
                else (
                    _("Job #%(id)s canceled.") % {"id": job.pk}
                    if done[0][1] == "canceled"
                    else _("Cancel requested for job #%(id)s.") % {"id": job.pk}
                )
            )
            self.message_user(request, msg, messages.SUCCESS)
        else:
            self.message_user(
                request,
                _("Job #%(id)s had already finished: nothing to cancel.") % {"id": job.pk},
                messages.WARNING,
            )
        return HttpResponseRedirect(self._job_url(job.pk))

    def detach_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if (bad := self._post_only(request)) is not None:
            return bad
        job = self._act(request, job_id)
        if services.detach_jobs([job.pk]):
            self.log_change(request, job, _("Detached"))
            self.message_user(
                request,
                _("Job #%(id)s detached: it keeps running and commits; its result is dropped.")
                % {"id": job.pk},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, _("Job #%(id)s was already detached.") % {"id": job.pk}, messages.WARNING
            )
        return HttpResponseRedirect(self._job_url(job.pk))

    def relaunch_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        if (bad := self._post_only(request)) is not None:
            return bad
        if not self.has_relaunch_permission(request):
            raise PermissionDenied
        job = self._job_or_404(request, job_id)
        outcome = services.relaunch([job], request.user)
        if outcome.launched:
            new_id = outcome.launched[0]
            self.message_user(
                request,
                _("Launched job #%(new)s again from job #%(old)s.")
                % {"new": new_id, "old": job.pk},
                messages.SUCCESS,
            )
            return HttpResponseRedirect(self._job_url(new_id))
        for _id, error in outcome.errors:
            self.message_user(
                request, _("Not launched: %(error)s") % {"error": error}, messages.ERROR
            )
        return HttpResponseRedirect(self._job_url(job.pk))

    # --- data endpoints ----------------------------------------------------------------------

    def state_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return views.job_state_response(self, request, self._job_or_404(request, job_id))

    def sections_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = self._job_or_404(request, job_id)
        request.current_app = self.admin_site.name
        return views.job_sections_response(self, request, job)

    def states_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return views.job_states_response(self, request)

    def csv_view(self, request: HttpRequest, job_id: int) -> HttpResponseBase:
        return views.job_csv_response(request, self._job_or_404(request, job_id))

    def stats_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return views.stats_page(self, request)
