"""The app's shared state and the one request path every face goes through.

A face parses its body into a :class:`~chatservice.models.ChatRequest` and hands it to
:func:`respond` with three renderers (answer, stream chunk, error) for its own envelope;
backend selection, streaming, and error localization happen here once for every face.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, jsonify

from chatservice.backends import Backend, Backends
from chatservice.errors import ErrorRenderer, FaceRegistry, ServiceError
from chatservice.i18n import Catalogs
from chatservice.logs import record, record_result, record_stream
from chatservice.models import ChatChunk, ChatRequest, ChatResult
from chatservice.settings import Settings
from chatservice.sse import event_stream
from chatservice.state import SharedState
from chatservice.web import request_language

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Service:
    """Everything the factory wires for one app: settings, catalogs, backends, faces, the
    shared state (at RATELIMIT_STORAGE_URI: key marks, chat rooms) and the store (at
    STORE_URL: conversations, shared conversations, turn locks, the auth replay cache).
    """

    settings: Settings
    catalogs: Catalogs
    backends: Backends
    faces: FaceRegistry
    state: SharedState
    store: SharedState


def current_service() -> Service:
    """The :class:`Service` of the app handling the current request."""
    return current_app.extensions["chatservice"]


def select_backend(req: ChatRequest) -> Backend:
    """The backend that answers ``req`` (logging the prompt when LOG_PROMPTS is on); the
    model and the backend go into the request's access record."""
    service = current_service()
    if service.settings.log_prompts:
        log.info("prompt model=%s messages=%r prompt=%r", req.model, req.messages, req.prompt)
    backend = service.backends.select(req)
    record(model=req.model, backend="local" if backend is service.backends.local else "upstream")
    return backend


def respond(
    req: ChatRequest,
    render_result: Callable[[ChatResult], dict[str, Any]],
    render_chunk: Callable[[ChatChunk], dict[str, Any]],
    render_error: ErrorRenderer,
    *,
    every_chunk: bool = False,
    wrap: Callable[[Iterator[ChatChunk]], Iterator[ChatChunk]] | None = None,
    final_event: dict[str, Any] | None = None,
) -> Response:
    """Answer ``req`` from the backend BACKEND selects, in the calling face's envelope.

    Streams become ``text/event-stream`` (see :func:`chatservice.sse.event_stream`); chunks
    with nothing to show (a role-only first chunk) are dropped unless ``every_chunk`` (the
    OpenAI-compatible face relays them all). ``wrap`` sees the chunks on their way (the
    chat room records the answer with it) and ``final_event`` is written before ``[DONE]``.
    Errors raised before the answer starts propagate to the app's error handler.
    """
    service = current_service()
    backend = select_backend(req)
    if not req.stream:
        result = backend.complete(req)
        record_result(result)
        return jsonify(render_result(result))
    lang = request_language()

    def stream_error(err: ServiceError) -> dict[str, Any]:
        return render_error(err, service.catalogs.translate(err.key, lang, **err.params))

    chunks = record_stream(backend.stream(req))
    if not every_chunk:
        chunks = _without_empty(chunks)
    if wrap is not None:
        chunks = wrap(chunks)
    return event_stream(chunks, render_chunk, stream_error, final_event)


def _without_empty(chunks: Iterator[ChatChunk]) -> Iterator[ChatChunk]:
    try:
        for chunk in chunks:
            if not chunk.empty:
                yield chunk
    finally:
        chunks.close()  # type: ignore[attr-defined]
