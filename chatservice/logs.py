"""Logging set-up and the access log (named loggers; never a key, a token or a prompt)."""

from __future__ import annotations

import logging
import sys
import time

from flask import Flask, Response, g, request

from chatservice.settings import Settings

access_log = logging.getLogger("chatservice.access")


def configure_logging(settings: Settings) -> None:
    """Send the ``chatservice`` loggers to stderr at LOG_LEVEL, unless logging is set up.

    gunicorn leaves the root logger bare; test runners and embedding programs do not, and
    their handlers then receive our records through propagation.
    """
    logger = logging.getLogger("chatservice")
    logger.setLevel(settings.log_level.upper())
    if logging.getLogger().handlers or any(
        getattr(h, "_chatservice", False) for h in logger.handlers
    ):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._chatservice = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def init_access_log(app: Flask) -> None:
    """Log one line per request: method, path, status, duration in milliseconds."""

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        started = g.get("request_started")
        duration = (time.perf_counter() - started) * 1000 if started else 0.0
        access_log.info(
            "%s %s %s %.1fms", request.method, request.path, response.status_code, duration
        )
        return response
