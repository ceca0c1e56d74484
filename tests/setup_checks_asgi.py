"""ASGI applications for tests/test_setup_checks.py, one per way of wiring (or not) the routes."""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application
from django.urls import path

from pgbackground.routing import websocket_urlpatterns

django_asgi_app = get_asgi_application()

# As the README and pgbackground/routing.py show.
routed = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
# Under a prefix, next to routes of the project's own.
nested = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(
            URLRouter([path("app/", URLRouter(websocket_urlpatterns))])
        ),
    }
)
# Channels, but no websockets at all.
http_only = ProtocolTypeRouter({"http": django_asgi_app})
# Only one of the two routes.
feed_only = ProtocolTypeRouter({"websocket": URLRouter(websocket_urlpatterns[:1])})
# Plain Django: no Channels router.
plain = django_asgi_app


class _Opaque:
    """A wrapper the check cannot look inside."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._wrapped(scope, receive, send)


opaque = _Opaque(routed)
