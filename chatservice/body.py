"""Reading request bodies once, whole, within MAX_BODY_BYTES and BODY_READ_TIMEOUT.

A WSGI middleware reads the body before Flask sees the request, however it is framed
(``Content-Length`` or chunked), and hands Flask an in-memory copy. A body over
MAX_BODY_BYTES is a 413 even when chunked (werkzeug would silently cut a chunked body at the
limit), and a body not complete within BODY_READ_TIMEOUT seconds is a 408: a client that
declares 100 bytes and sends 1 cannot hold one of the worker's connections for long. Both
close the connection, since the rest of the body is never read. The errors are raised from a
``before_request`` hook, so they come back in the face's own envelope, localized.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from flask import Flask, request

from chatservice.errors import PayloadTooLarge, ServiceError

log = logging.getLogger(__name__)

_PIECE = 65536
_PROBLEM = "chatservice.body_problem"
#: The environ key holding the body :class:`BodyReader` read (bytes).
_BODY = "chatservice.body"


class _BodyTimeout(Exception):
    """BODY_READ_TIMEOUT passed while reading a body."""


class BodyReader:
    """WSGI middleware: read the body into memory first (see the module's doc).

    :param app: the WSGI app to call with the body read.
    :param max_bytes: MAX_BODY_BYTES.
    :param timeout: BODY_READ_TIMEOUT, seconds for the whole body.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Read the body (when there is one), then call the app (WSGI)."""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        declared = environ.get("CONTENT_LENGTH") or ""
        if chunked or (declared.isdigit() and int(declared) > 0):
            # A chunked body's length is its chunks' (a Content-Length beside it is ignored,
            # as HTTP/1.1 says).
            length = int(declared) if declared.isdigit() and not chunked else None
            problem, body = self._read(environ, length)
            environ["wsgi.input"] = io.BytesIO(body)
            environ[_BODY] = body
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ["wsgi.input_terminated"] = False
            if problem is not None:
                environ[_PROBLEM] = problem
        return self.app(environ, start_response)

    def _read(self, environ: dict[str, Any], declared: int | None) -> tuple[str | None, bytes]:
        if declared is not None and declared > self.max_bytes:
            return "too_large", b""
        stream = environ["wsgi.input"]
        pieces, size = [], 0
        try:
            # gevent.Timeout bounds the whole body, not each read: a trickle of one byte per
            # interval would outlive any per-read timeout.
            with gevent.Timeout(self.timeout, _BodyTimeout):
                # A declared length is read up to its end, not to one more (empty) read.
                while (want := _PIECE if declared is None else declared - size) > 0:
                    piece = stream.read(want)
                    if not piece:
                        break
                    size += len(piece)
                    if size > self.max_bytes:
                        return "too_large", b""
                    pieces.append(piece)
        except _BodyTimeout:
            log.info("request body not complete within BODY_READ_TIMEOUT; connection closed")
            return "timeout", b""
        except (OSError, ValueError):
            # The client went away or broke the chunked framing.
            return "broken", b""
        return None, b"".join(pieces)


def request_body() -> bytes:
    """The current request's body, whole: the bytes :class:`BodyReader` read, without
    werkzeug's stream wrappers and their checks on every read (about forty Python calls);
    werkzeug's ``get_data`` for a request it did not read (no body, an app without it).
    """
    req = request._get_current_object()  # type: ignore[attr-defined]
    body = req.environ.get(_BODY)
    return req.get_data(cache=True) if body is None else body


def init_app(app: Flask, max_bytes: int, timeout: float) -> None:
    """Install :class:`BodyReader` under ``app`` and the hook that reports its problems."""
    app.wsgi_app = BodyReader(app.wsgi_app, max_bytes, timeout)  # type: ignore[method-assign]

    @app.before_request
    def body_problem() -> None:
        problem = request.environ.get(_PROBLEM)
        if problem is None:
            return
        # The unread rest of the body would be taken for the next request: close.
        if problem == "too_large":
            raise PayloadTooLarge(limit=max_bytes, headers={"Connection": "close"})
        if problem == "timeout":
            raise ServiceError("body_timeout", headers={"Connection": "close"})
        raise ServiceError("invalid_body", headers={"Connection": "close"})
