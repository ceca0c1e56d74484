"""Websocket routes of the live pages; include them in the project's ASGI application::

    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from pgbackground.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    })
"""

from __future__ import annotations

from django.urls import path, re_path

from .consumers import FeedConsumer, JobConsumer

websocket_urlpatterns = [
    path("ws/pgbackground/jobs/", FeedConsumer.as_asgi(), name="pgbackground-feed"),
    # At most 19 digits: a job id is a positive bigint.
    re_path(
        r"^ws/pgbackground/jobs/(?P<job_id>[1-9][0-9]{0,18})/$",
        JobConsumer.as_asgi(),
        name="pgbackground-job",
    ),
]
