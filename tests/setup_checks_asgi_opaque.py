"""An ASGI application the setup check cannot look inside, in a module without the routes."""

from __future__ import annotations

from tests.setup_checks_asgi import _Opaque, http_only

application = _Opaque(http_only)
