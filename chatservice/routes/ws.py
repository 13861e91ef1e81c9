"""The WebSocket streaming face of chatgpt-websocket: ``/{ROUTE}/ws``.

Each client text frame is one request, a JSON object
``{"seq": <non-empty string>, "data": {...}}``; ``data`` holds the ``POST /{ROUTE}/v1/chat``
parameters (``query``/``messages``, ``model``, ``openai_parameter``, ``temperature``,
``max_tokens``, ...; see :mod:`chatservice.routes.chat`) plus ``origin_stream`` (default true,
as in the original) and an optional ``lang``. Frames are parsed as JSON only (the original used
``eval``).

Every answer frame is
``{"code": 0, "msg": "ok", "seq": <seq>, "data": {"consume_time": "1.23",
"finish_reason": null|"stop"|"length", "contents": <text>}}``, where ``consume_time`` is the
seconds since the request frame arrived, with two decimals, as a string. With
``origin_stream`` true there is one frame per piece the model produces, as it comes; with
false, whole sentences: text is held until it ends in one of ``. ? ! , ; 。 ？ ！ ， ；`` or a
closing quote. The last frame of every answer has ``finish_reason`` set.

A failure answers one frame with ``code`` the HTTP status it would have had (400 for a bad
frame or parameter, 429 when rate limited, 502/504 for the upstream, ...), the localized reason
in ``msg``, and ``data.error`` the stable key; the socket stays open for the next request.
Requests on one socket are answered in order; sockets are independent gevent greenlets.

Frames count against the same per-IP budget as every HTTP chat face (one budget for all
faces). A frame over MAX_BODY_BYTES closes the socket with 1009 (message too big); more than
WS_MAX_BACKLOG frames, or more than twice MAX_BODY_BYTES, waiting for their answer close it
with 1008 (policy violation), so one socket cannot fill the worker's memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from typing import Any, NoReturn

import limits
from flask import Blueprint, Flask, current_app, request
from flask.blueprints import BlueprintSetupState
from flask_limiter import Limiter
from flask_sock import Sock
from simple_websocket import ConnectionClosed, Server

from chatservice import validation
from chatservice.errors import BadRequest, InternalError, RateLimited, ServiceError
from chatservice.i18n import negotiate
from chatservice.jsonsafe import find_unsafe_value
from chatservice.limits import shared_identifiers
from chatservice.metrics import Metrics, current_metrics
from chatservice.models import ChatRequest
from chatservice.routes.chat import build_request
from chatservice.service import Service, current_service
from chatservice.web import request_language
from chatservice.wslimits import POLICY_VIOLATION, TOO_MANY, Backlog, server_options

log = logging.getLogger(__name__)

#: Characters that end a "sentence" frame when ``origin_stream`` is false: the original's
#: punctuation (ASCII and full-width) and closing quotes.
SENTENCE_ENDS = frozenset(".?!,;。？！，；\"'”’」』")

#: How often (seconds) an idle socket's reader checks whether the session is over; only the
#: rare close started by the server needs it (a client's close wakes the reader at once).
READ_POLL_SECONDS = 1.0


def prefix(route: str) -> str:
    """The face's path: ``{ROUTE}/ws``."""
    return f"{route}/ws"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint: the WebSocket at ``{ROUTE}/ws`` (with or without a trailing
    slash), and a plain-HTTP view on the same path that answers 426 in the face's envelope.
    """
    blueprint = Blueprint("ws", __name__)
    blueprint.record_once(_configure_server)
    sock = Sock()
    path = prefix(route)
    for index, rule in enumerate((path, path + "/")):
        sock.route(rule, bp=blueprint, endpoint=f"socket_{index}")(serve)
        # Without this view werkzeug answers a non-upgrade GET with a bare 400, which the
        # error handler would report as invalid JSON.
        blueprint.add_url_rule(
            rule, endpoint=f"upgrade_required_{index}", view_func=upgrade_required
        )
    return blueprint


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """chatgpt-service's failure envelope for HTTP errors on the path (before any upgrade)."""
    return {"code": err.status, "msg": message, "data": {"error": err.key}}


def upgrade_required() -> NoReturn:
    """GET ``{ROUTE}/ws`` without a WebSocket upgrade: 426 ``ws_upgrade_required``."""
    raise ServiceError("ws_upgrade_required", headers={"Upgrade": "websocket"})


def serve(ws: Server) -> None:
    """Serve one WebSocket connection until the client closes it (flask-sock's handler)."""
    service = current_service()
    limiter: Limiter | None = current_app.extensions.get("chatservice.limiter")
    session = _Session(
        ws=ws,
        service=service,
        lang=request_language(),
        client_ip=request.remote_addr or "127.0.0.1",
        limiter=limiter if limiter is not None and limiter.enabled else None,
        limit_items=[limits.parse(value) for value in service.settings.rate_limits],
        metrics=current_metrics(),
        backlog=Backlog(
            max_frames=service.settings.ws_max_backlog,
            max_bytes=2 * service.settings.max_body_bytes,
        ),
    )
    session.run()


def _configure_server(state: BlueprintSetupState) -> None:
    """Bound WebSocket messages by MAX_BODY_BYTES, like HTTP bodies, and the frames a socket
    may have waiting (:mod:`chatservice.wslimits`), unless configured otherwise.
    """
    app: Flask = state.app
    service: Service | None = app.extensions.get("chatservice")
    if service is not None:
        settings = service.settings
        app.config.setdefault(
            "SOCK_SERVER_OPTIONS",
            server_options(
                settings.ws_max_backlog, 2 * settings.max_body_bytes, settings.max_body_bytes
            ),
        )


@dataclasses.dataclass
class _Frame:
    """One client message: its payload, when it arrived (``time.monotonic()``), and the 429
    to answer instead when it went over the rate limit.
    """

    raw: str | bytes
    arrived: float
    limited: RateLimited | None


@dataclasses.dataclass
class _Session:
    """One socket: a reader greenlet stamps and rate-limits frames as they arrive, and
    :meth:`run` answers them one at a time, in order.
    """

    ws: Server
    service: Service
    lang: str
    client_ip: str
    limiter: Limiter | None
    limit_items: list[limits.RateLimitItem]
    metrics: Metrics
    backlog: Backlog
    closing: bool = False

    def run(self) -> None:
        """Answer frames until the client goes away."""
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        try:
            while (frame := self.backlog.get()) is not None:
                self._handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self.closing = True

    def _read(self) -> None:
        # Reading in its own greenlet lets consume_time and the rate limit count from the
        # moment a frame arrives, even while an earlier answer is still streaming.
        try:
            while not self.closing:
                raw = self.ws.receive(timeout=READ_POLL_SECONDS)
                if raw is None:
                    continue
                if not self.backlog.put(_Frame(raw, time.monotonic(), self._over_limit())):
                    log.warning("websocket closed: %s (answer queue)", TOO_MANY)
                    self.ws.close(POLICY_VIOLATION, TOO_MANY)
                    break
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("websocket reader failed")
        finally:
            self.backlog.end()

    def _over_limit(self) -> RateLimited | None:
        """Count one hit per frame against the per-IP limits; the 429 when one is exceeded."""
        if self.limiter is None:
            return None
        strategy = self.limiter.limiter
        identifiers = shared_identifiers(self.client_ip)
        try:
            for item in self.limit_items:
                if not strategy.hit(item, *identifiers):
                    reset = strategy.get_window_stats(item, *identifiers).reset_time
                    # The HTTP faces are counted by the after_request hook; a frame has none.
                    self.metrics.rate_limited.labels("ws").inc()
                    return RateLimited(max(1, math.ceil(reset - time.time())))
        except Exception:
            # Same policy as the HTTP faces (swallow_errors): a counter-store outage must
            # not take the chat API down.
            log.exception("rate limit storage failed; websocket frame let through")
        return None

    def _handle(self, frame: _Frame) -> None:
        """Answer one frame, or send its one error frame. Raises ``ConnectionClosed``."""
        seq, lang = "", self.lang
        try:
            message, problem = _parse(frame.raw)
            if message is not None:
                seq = _known_seq(message)
                lang = _frame_lang(message, self.lang)
            if frame.limited is not None:
                raise frame.limited
            if message is None or problem is not None:
                raise problem or BadRequest("ws_invalid_frame")
            data = message["data"]
            req = build_request(data, self.service.settings)
            req.stream = True
            sentences = not validation.boolean(data, "origin_stream", True)
            self._answer(req, seq, frame.arrived, sentences)
        except ConnectionClosed:
            raise
        except ServiceError as err:
            self._send_error(err, seq, lang, frame.arrived)
        except Exception:
            log.exception("websocket request failed")
            self._send_error(InternalError(), seq, lang, frame.arrived)

    def _answer(self, req: ChatRequest, seq: str, arrived: float, sentences: bool) -> None:
        """Stream the answer to ``req`` as frames (pieces, or sentences when ``sentences``)."""
        chunks = self.service.pipeline.stream(req)
        pending = ""
        finished = False
        try:
            for chunk in chunks:
                if not self.ws.connected:
                    # Only a send would notice otherwise, and sentence mode may not send for
                    # a while: stop the generation now (the finally closes the stream).
                    raise ConnectionClosed()
                # Read on after the finish so the upstream connection ends cleanly ([DONE]).
                if finished or (chunk.finish_reason is None and not chunk.text):
                    continue
                pending += chunk.text
                finished = chunk.finish_reason is not None
                if finished or not sentences or _ends_sentence(pending):
                    self._send(seq, arrived, pending, chunk.finish_reason)
                    pending = ""
        except ServiceError:
            if pending:  # what was generated before the failure still reaches the client
                self._send(seq, arrived, pending, None)
            raise
        finally:
            chunks.close()  # type: ignore[attr-defined]
        if not finished:
            self._send(seq, arrived, pending, "stop")

    def _send(self, seq: str, arrived: float, contents: str, finish_reason: str | None) -> None:
        self._send_frame(
            {
                "code": 0,
                "msg": "ok",
                "seq": seq,
                "data": {
                    "consume_time": _elapsed(arrived),
                    "finish_reason": finish_reason,
                    "contents": contents,
                },
            }
        )

    def _send_error(self, err: ServiceError, seq: str, lang: str, arrived: float) -> None:
        message = self.service.pipeline.localize(err, lang)
        self._send_frame(
            {
                "code": err.status,
                "msg": message,
                "seq": seq,
                "data": {
                    "consume_time": _elapsed(arrived),
                    "finish_reason": "stop",
                    "contents": "",
                    "error": err.key,
                },
            }
        )

    def _send_frame(self, payload: dict[str, Any]) -> None:
        try:
            self.ws.send(json.dumps(payload, ensure_ascii=False))
        except OSError:
            # A reset peer shows up as a socket error rather than a WebSocket close.
            raise ConnectionClosed() from None


def _parse(raw: str | bytes) -> tuple[dict[str, Any] | None, BadRequest | None]:
    """The frame as a JSON object (``None`` if it is not one) and what is wrong with it."""
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # a binary frame's UnicodeDecodeError; deep nesting
        return None, BadRequest("ws_invalid_frame")
    if not isinstance(message, dict):
        return None, BadRequest("ws_invalid_frame")
    unsafe = find_unsafe_value(message)
    if unsafe is not None:
        if unsafe.params.get("field") == "seq":  # a seq that cannot be echoed is no seq
            message.pop("seq")
        return message, unsafe
    seq = message.get("seq")
    if not isinstance(seq, str) or not seq.strip():
        return message, BadRequest("ws_invalid_seq")
    if not isinstance(message.get("data"), dict):
        return message, BadRequest("ws_invalid_data")
    return message, None


def _known_seq(message: dict[str, Any]) -> str:
    seq = message.get("seq")
    return seq if isinstance(seq, str) else ""


def _frame_lang(message: dict[str, Any], socket_lang: str) -> str:
    """``data.lang`` when it names a known language, else the socket's handshake language."""
    data = message.get("data")
    lang = data.get("lang") if isinstance(data, dict) else None
    return negotiate([lang if isinstance(lang, str) else None], [], socket_lang)


def _ends_sentence(text: str) -> bool:
    # Trailing whitespace does not hide the end (a ".\n" token), as in the original.
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in SENTENCE_ENDS


def _elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.2f}"
