"""Per-client-IP rate limits with flask-limiter (HOUR_LIMIT, MINUTE_LIMIT, SECOND_LIMIT).

All chat faces share one budget per client IP (scope ``chat``), counted with the
moving-window strategy so that "2 per second" never lets 4 through across a window edge.
The client IP is the socket address, or the X-Forwarded-For entry TRUSTED_PROXIES hops back
(werkzeug's ProxyFix, installed by the app factory). Storage is any ``limits`` URI
(``memory://``, ``redis://``).

When the storage fails (Redis down) the limiter lets requests through and logs it
(``swallow_errors``): an outage of the counter store should not take the chat API down.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from chatservice.settings import Settings

SCOPE = "chat"
KEY_PREFIX = "chatservice"


def shared_identifiers(client_ip: str) -> tuple[str, str, str]:
    """The counter identifiers of ``client_ip``'s shared chat budget, exactly as flask-limiter
    builds them for the HTTP faces (key prefix, client, shared scope), so that the WebSocket
    face counts against the same budget.
    """
    return (KEY_PREFIX, client_ip, SCOPE)


def create_limiter(app: Flask, settings: Settings) -> Limiter | None:
    """A limiter bound to ``app``, or ``None`` when no limit is configured."""
    if not settings.rate_limits:
        return None

    # Registered before the limiter's own hook, so it runs after it (Flask runs after_request
    # hooks in reverse): the 429's Retry-After stays the number of seconds its message names.
    @app.after_request
    def keep_retry_after(response: Response) -> Response:
        seconds = g.get("retry_after")
        if seconds is not None:
            response.headers["Retry-After"] = str(seconds)
        return response

    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.shared_state_url,
        strategy="moving-window",
        headers_enabled=True,
        swallow_errors=True,
        key_prefix=KEY_PREFIX,
    )
    app.extensions["chatservice.limiter"] = limiter
    return limiter


def limit_face(limiter: Limiter | None, settings: Settings, blueprint: Blueprint) -> None:
    """Apply the shared per-IP limits to every view of a chat face's ``blueprint``."""
    if limiter is not None:
        limiter.shared_limit(";".join(settings.rate_limits), scope=SCOPE)(blueprint)
