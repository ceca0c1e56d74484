"""System checks on how a project wires pgbackground in (the settings are checked in checks.py).

- ``pgbackground.W010``: ``ASGI_APPLICATION`` is set but does not route
  ``pgbackground.routing.websocket_urlpatterns`` (or Channels is not installed): the admin pages
  then poll instead of updating live. The ASGI application is imported only by this check.
- ``pgbackground.W011``: the ASGI application could not be imported to look.
- ``pgbackground.W012``: no worker sent a heartbeat within ``WORKER_LOST_AFTER`` (a database
  check: ``manage.py check --database default``, ``migrate``): queued jobs wait for a pool.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register

_ROUTING_HINT = (
    "Route them in the ASGI application: ProtocolTypeRouter({'http': django_asgi_app,"
    " 'websocket': AllowedHostsOriginValidator(AuthMiddlewareStack("
    "URLRouter(websocket_urlpatterns)))}); see pgbackground/routing.py and docs/quickstart.md."
)
# Attributes through which ASGI wrappers hold the application they wrap: channels' routers and
# middleware (application_mapping, routes, inner), OriginValidator and Django's static files
# handler (application), and common third-party wrappers (app).
_WRAPPED = ("inner", "application", "app")
_MAX_DEPTH = 30


def _walk(app: Any, seen: set[int], depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield ('consumer', consumer class) for every routed consumer, ('opaque', obj) for any
    object the walk could not look inside."""
    from django.core.handlers.asgi import ASGIHandler

    if app is None or id(app) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(app))
    consumer = getattr(app, "consumer_class", None)
    if isinstance(consumer, type):
        yield "consumer", consumer
        return
    mapping = getattr(app, "application_mapping", None)
    routes = getattr(app, "routes", None)
    found = False
    if isinstance(mapping, dict):  # ProtocolTypeRouter: only its websocket branch matters
        yield from _walk(mapping.get("websocket"), seen, depth + 1)
        return
    if isinstance(app, ASGIHandler):
        return  # Django's own handler serves HTTP only
    if isinstance(routes, list | tuple):
        found = True
        for route in routes:
            yield from _walk(getattr(route, "callback", None), seen, depth + 1)
    for name in _WRAPPED:
        inner = getattr(app, name, None)
        if inner is not None and callable(inner):
            found = True
            yield from _walk(inner, seen, depth + 1)
    if not found:
        yield "opaque", app


def _routes_pgbackground(app: Any, module_name: str) -> bool:
    """Whether the ASGI application routes both of pgbackground's websocket consumers."""
    from .consumers import FeedConsumer, JobConsumer

    consumers: set[type] = set()
    opaque = False
    for kind, obj in _walk(app, set()):
        if kind == "consumer":
            consumers.add(obj)
        else:
            opaque = True
    wanted = (FeedConsumer, JobConsumer)
    if all(any(issubclass(c, w) for c in consumers) for w in wanted):
        return True
    if not opaque:
        return False
    # Something we cannot look inside (a custom wrapper): trust the module if it uses the routes.
    from . import routing

    namespace = vars(sys.modules[module_name]) if module_name in sys.modules else {}
    return any(v is routing or v is routing.websocket_urlpatterns for v in namespace.values())


# Tagged ``urls`` (routing), not ``compatibility``: runworkers runs only the compatibility checks
# and has no reason to import the ASGI application.
@register(Tags.urls)
def check_asgi_routing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        return []  # WSGI only: the admin pages poll, as documented
    if importlib.util.find_spec("channels") is None:
        return [
            Warning(
                f"ASGI_APPLICATION is {path!r} but Channels is not installed: pgbackground's"
                " admin pages fall back to polling instead of live updates.",
                hint='pip install "pgbackground[channels]" and route'
                " pgbackground.routing.websocket_urlpatterns in the ASGI application.",
                id="pgbackground.W010",
            )
        ]
    module_name = str(path).rpartition(".")[0]
    try:
        from django.utils.module_loading import import_string

        app = import_string(str(path))
    except Exception as exc:
        return [
            Warning(
                f"Could not import ASGI_APPLICATION {path!r} to check its websocket routes:"
                f" {type(exc).__name__}: {exc}",
                id="pgbackground.W011",
            )
        ]
    if _routes_pgbackground(app, module_name):
        return []
    return [
        Warning(
            f"The ASGI application {path!r} does not route"
            " pgbackground.routing.websocket_urlpatterns: the admin pages fall back to polling"
            " instead of live updates.",
            hint=_ROUTING_HINT,
            id="pgbackground.W010",
        )
    ]


@register(Tags.database)
def check_worker_heartbeat(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when no ``runworkers`` process is alive: launched jobs would stay queued."""
    if not databases:
        return []
    from django.db import DatabaseError
    from django.utils import timezone

    from .conf import app_settings
    from .db import models_alias
    from .models import Worker

    alias = models_alias()
    if alias not in databases:
        return []
    lost_after = app_settings.seconds("WORKER_LOST_AFTER")
    since = timezone.now() - timedelta(seconds=lost_after)
    try:
        alive = (
            Worker.objects.using(alias)
            .filter(stopped_at__isnull=True, heartbeat_at__gte=since)
            .exists()
        )
    except DatabaseError:
        return []  # not migrated yet (migrate runs database checks before migrating)
    if alive:
        return []
    return [
        Warning(
            f"No pgbackground worker has sent a heartbeat in the last {lost_after:g} s:"
            " launched jobs stay queued until a pool runs.",
            hint="Start `manage.py runworkers` on at least one machine; the admin's workers page"
            " shows the pools and their last heartbeats.",
            id="pgbackground.W012",
        )
    ]
