"""The "pgbackground operators" group (pg_background's ``pgbackground_role``): launch, see and
act on everyone's jobs. ``manage.py pgbackground grant/revoke`` manages its members.

Permissions are normally created after ``migrate`` (post_migrate), too late for a data
migration: they are created here first, the usual way. Names are spelled out (not imported) so
this migration keeps working whatever the app's code becomes.
"""

from django.db import migrations

GROUP = "pgbackground operators"
PERMISSIONS = (
    "launch_job",
    "view_job",
    "view_all_jobs",
    "cancel_all_jobs",
    "change_job",
    "delete_job",
)


def create_group(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    db = schema_editor.connection.alias
    app_config = apps.get_app_config("pgbackground")
    app_config.models_module = True  # create_permissions skips apps without models
    create_permissions(app_config, apps=apps, verbosity=0, using=db)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    perms = list(
        Permission.objects.using(db).filter(
            content_type__app_label="pgbackground",
            content_type__model="job",
            codename__in=PERMISSIONS,
        )
    )
    missing = set(PERMISSIONS) - {p.codename for p in perms}
    if missing:
        raise RuntimeError("pgbackground permissions missing: " + ", ".join(sorted(missing)))
    group, _ = Group.objects.using(db).get_or_create(name=GROUP)
    group.permissions.add(*perms)


def delete_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("pgbackground", "0002_progress_function"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
