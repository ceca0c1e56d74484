"""pgbackground's admin: job list, job page, launch form, workers page and stats dashboard.

Registered on Django's default admin site; projects with their own site can register
:class:`JobAdmin` and :class:`WorkerAdmin` there instead.
"""

from django.contrib import admin

from ..models import Job, Worker
from .jobs import JobAdmin
from .workers import WorkerAdmin

__all__ = ["JobAdmin", "WorkerAdmin"]

admin.site.register(Job, JobAdmin)
admin.site.register(Worker, WorkerAdmin)
