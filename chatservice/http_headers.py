"""Security headers on every response, and CORS for browsers calling the chat faces directly.

Security headers ("Operations"), added by a WSGI middleware as each response starts, so JSON
answers, errors and event streams all carry them:

- ``X-Content-Type-Options: nosniff`` always: a browser must not guess that an answer
  quoting HTML is a page;
- ``Referrer-Policy: no-referrer`` and ``X-Frame-Options: DENY``, unless the response set its
  own (a page such as the playground brings its own policy, CSP included).

CORS (CORS_ORIGINS: a list of origins, ``*`` for any, empty for none, the default), for the
chat faces only (and unrouted paths under ROUTE, so a 404 or 405 stays readable), not for
``/healthz``, ``/readyz``, ``/metrics``, the docs, the playground nor the admin view. A request
whose ``Origin`` is allowed gets it echoed in ``Access-Control-Allow-Origin`` (``Vary: Origin``
marks every answer of those faces, since another origin would get another answer), and its
script may read ``Retry-After``, ``X-Request-ID`` and ``X-RateLimit-*``
(``Access-Control-Expose-Headers``). A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is Flask's automatic ``OPTIONS`` answer, plus the route's
methods, the request headers the faces read (``Content-Type``, ``Authorization``, ``token``,
``uuid``, ``conversation``, ``settings``, ``X-Room-Id``, ``X-Request-ID``) and a max age.
Credentials mode (cookies) is never allowed: the faces authenticate with headers.
A preflight carries no credentials and costs nothing, so it passes AUTH_MODE
(:mod:`chatservice.auth` lets automatic ``OPTIONS`` through) and is exempt from the rate
limits (a flask-limiter request filter installed here): a browser's preflight must neither
be refused nor spend the request budget of the call it precedes.

Why not ``flask-cors``: the policy above is some forty lines, while flask-cors would bring a
dependency (with its own history of path-matching advisories) and, by default, wrap the app's
exception handlers to decorate error responses, which this app's single error handler and
``after_request`` (which also runs for handled errors) already cover; it would also leave the
rate-limit exemption of preflights to be written anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limiter

from chatservice.settings import Settings

#: Headers set on every response unless the response has its own.
DEFAULT_HEADERS = {"Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
#: Request headers a browser script may send to the chat faces (theirs included).
ALLOW_HEADERS = (
    "Content-Type",
    "Authorization",
    "token",
    "uuid",
    "conversation",
    "settings",
    "X-Room-Id",
    "X-Request-ID",
)
#: Response headers a browser script may read besides the CORS-safelisted ones.
EXPOSE_HEADERS = (
    "Retry-After",
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Share-Id",
)
#: Seconds a browser may cache a preflight's answer.
MAX_AGE = 600


class CorsPolicy:
    """Which origins may call the chat faces: ``origins`` as CORS_ORIGINS lists them.

    Origins compare case-insensitively and without a trailing slash; ``*`` allows any. CORS
    applies to the blueprints named in ``faces`` (the chat faces) only: operations endpoints,
    the admin view, the docs and the playground page are not cross-origin APIs.
    """

    def __init__(
        self, origins: tuple[str, ...], route: str = "", faces: frozenset[str] = frozenset()
    ) -> None:
        self._route = route
        self.faces = faces
        normalized = {_normalize(origin) for origin in origins if origin.strip()}
        self.any_origin = "*" in normalized
        self.origins = frozenset(normalized - {"*"})

    @property
    def enabled(self) -> bool:
        """False when CORS_ORIGINS is empty: no CORS header at all."""
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        """Whether a request from ``origin`` (its ``Origin`` header) may be answered."""
        if not origin or not self.enabled:
            return False
        return self.any_origin or _normalize(origin) in self.origins

    def apply(self, response: Response) -> None:
        """Add the CORS headers the current request earns to ``response``."""
        if not self.enabled or not self._in_scope():
            return
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if not self.allows(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = origin or ""
        if is_preflight():
            methods = response.headers.get("Allow") or "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Methods"] = methods
            response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOW_HEADERS)
            response.headers["Access-Control-Max-Age"] = str(MAX_AGE)
        else:
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)

    def _in_scope(self) -> bool:
        if request.blueprint is not None:
            return request.blueprint in self.faces
        # No route matched (404, 405): errors under ROUTE stay readable by the calling page.
        path = request.path
        return not self._route or path == self._route or path.startswith(self._route + "/")


def is_preflight() -> bool:
    """Whether the current request is a CORS preflight (see :func:`is_automatic_options`)."""
    return is_automatic_options() and "Access-Control-Request-Method" in request.headers


def is_automatic_options() -> bool:
    """Whether the current request is answered by Flask's automatic ``OPTIONS``, which runs
    no view (the same test :mod:`chatservice.auth` uses to let it through).
    """
    rule = request.url_rule
    return request.method == "OPTIONS" and bool(getattr(rule, "provide_automatic_options", False))


def with_security_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` (a WSGI header list) with ``nosniff`` (replacing any other value) and the
    :data:`DEFAULT_HEADERS` it does not set itself (names compare case-insensitively)."""
    present = {name.lower() for name, _value in headers}
    if _NOSNIFF_LOWER in present:
        headers = [(name, value) for name, value in headers if name.lower() != _NOSNIFF_LOWER]
    else:
        headers = [*headers]  # the caller's list stays as it was
    headers.append((_NOSNIFF, "nosniff"))
    headers.extend(
        (name, value) for name, value in DEFAULT_HEADERS.items() if name.lower() not in present
    )
    return headers


_NOSNIFF = "X-Content-Type-Options"
_NOSNIFF_LOWER = _NOSNIFF.lower()


class SecurityHeaders:
    """WSGI middleware adding :func:`with_security_headers` to every response of ``app``.

    On the WSGI header list rather than in an ``after_request`` hook: werkzeug's ``Headers``
    scans its list case-insensitively in Python for each header set, some sixty Python
    calls per response for these three, against about ten here.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Call the app, adding the headers when it starts its response (WSGI)."""

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, with_security_headers(headers), exc_info)

        return self.app(environ, start)


def init_app(
    app: Flask, settings: Settings, limiter: Limiter | None, faces: frozenset[str]
) -> None:
    """Install the security headers' middleware on ``app``, the CORS hook when CORS_ORIGINS
    allows any origin, and exempt ``OPTIONS`` from ``limiter``'s limits; ``faces``: the chat
    faces' blueprint names, the ones CORS applies to."""
    cors = CorsPolicy(settings.cors_origins, settings.route, faces)
    if limiter is not None:
        # Automatic OPTIONS runs no view; counting it would let preflights eat the budget.
        limiter.request_filter(is_automatic_options)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # type: ignore[method-assign]
    if not cors.enabled:
        return  # CorsPolicy.apply would add nothing

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        cors.apply(response)
        return response


def _normalize(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
