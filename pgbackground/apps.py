from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PgBackgroundConfig(AppConfig):
    name = "pgbackground"
    verbose_name = _("Background SQL jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401 - registers the system checks
            setup_checks,  # noqa: F401 - registers the setup checks
        )
