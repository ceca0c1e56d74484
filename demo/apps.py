from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo project as an app: its sales table, ``seed_demo`` and the report pages."""

    name = "demo"
    verbose_name = "pgbackground demo"
    default_auto_field = "django.db.models.BigAutoField"
