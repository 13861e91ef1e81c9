"""The access log: one record per request on the ``chatservice.access`` logger.

:class:`AccessLogMiddleware` wraps the WSGI app and writes the record for a whole answer as
soon as the app has made it (so the line exists when the client has its answer), for a stream
when its last byte was sent or the client went away, with the final token counts. Fields, in
this order (:data:`FIELDS`): ``request_id`` (the client's ``X-Request-ID`` when it is a sane
token, at most 128 of ``[A-Za-z0-9._-]``, else a fresh uuid4 hex; returned in the
``X-Request-ID`` response header), ``face`` (the blueprint: ``api``, ``chat``, ``openai_api``,
``chatroom``, ``ws``, ``conversations``, ``ops``, ...; null when no route matched), ``route``
(the URL rule, such as ``/api/chatgpt/share/<share_id>``, never the raw path with its ids),
``method``, ``status``, ``duration_ms``, ``ip`` (the client after TRUSTED_PROXIES, from
werkzeug's ProxyFix), ``model``, ``prompt_tokens``, ``completion_tokens``, ``backend``
(``upstream`` or ``local``), then ``upstream`` (with ``[[upstreams]]``: the name of the one that
answered, after fallbacks), ``usage`` (``reported``: the backend's own numbers; the answer
reported none, so :mod:`chatservice.tokens` made them: ``counted`` with the model's tokenizer,
``estimated`` with its approximation), ``cache`` (``HIT`` or ``MISS`` for a cacheable request),
``error`` (the stable key of an error that ended a started stream) and ``aborted`` (the
client left before the end) when they apply. The answer pipeline
(:mod:`chatservice.pipeline`) fills model, backend, tokens and error through one observer,
:class:`AccessRecord`. A key, a token or a prompt is never a field.

How a record becomes a line (LOG_FORMAT, LOG_DIR) is :mod:`chatservice.logs`'s business:
``json`` writes the fields as one JSON object per line (plus ``time`` and ``pid``), ``text``
writes ``POST /api 200 12.3ms id=... face=api ...``. Access records are logged at INFO
whatever LOG_LEVEL says (LOG_LEVEL governs the application log), like gunicorn's own access
log.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from types import GeneratorType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from chatservice.models import ChatChunk, ChatResult
    from chatservice.pipeline import Call
    from chatservice.tokens import Method, TokenCounter

# Flask is imported inside the functions: gunicorn's master imports this module (for
# ACCESS_LOGGER) through the log set-up, and must not import Flask before its gevent workers
# monkey-patch the standard library (see chatservice/__init__.py).

ACCESS_LOGGER = "chatservice.access"
access_log = logging.getLogger(ACCESS_LOGGER)

#: The WSGI environ key holding the current request's access-log fields (a dict).
ENVIRON_KEY = "chatservice.access"
#: The WSGI environ key holding when the request reached the app (``time.perf_counter()``
#: seconds): its access line's duration and its metrics' latency count from there.
STARTED_KEY = "chatservice.started"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Characters of a model name kept in an access line (the name comes from the client).
MAX_MODEL_CHARS = 128
#: Event bytes of relayed chunks a stream's record holds before it counts their tokens
#: (bounded, since thousands of streams may be open).
PENDING_BYTES = 2048


def init_access_log(app: Flask) -> None:
    """Write one access record per request of ``app`` (see the module docstring)."""
    from flask import request

    @app.teardown_request
    def note_route(_exc: BaseException | None) -> None:
        # Teardown runs for every request, whatever hook or view failed, while the request
        # context still knows the matched rule (a stream's context is gone when it ends).
        # The request object once: each read through Flask's proxy costs Python calls.
        req = request._get_current_object()  # type: ignore[attr-defined]
        fields = req.environ.get(ENVIRON_KEY)
        if fields is None:
            return
        rule = req.url_rule
        fields["face"] = req.blueprint
        fields["route"] = rule.rule if rule is not None else None
        fields["ip"] = req.remote_addr

    app.wsgi_app = AccessLogMiddleware(app.wsgi_app)  # type: ignore[method-assign]


def request_id_from(value: str | None) -> str:
    """``value`` when it is a sane request id (1 to 128 of ``[A-Za-z0-9._-]``), else a new
    uuid4 hex."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class AccessRecord:
    """The pipeline observer that fills the access record: ``model`` and ``backend`` when a
    call starts, then the answering model and token counts of the result or of the chunks as
    they pass, and the stable key of a :class:`ServiceError` that ends a stream.

    The one writer of these fields (a :class:`chatservice.pipeline.Observer`). With a
    ``counter``, an answer that reported no usage (most streams) gets counted numbers.
    """

    def __init__(self, counter: TokenCounter | None = None) -> None:
        # Imported here, once, not in begin(): an import from a package inside a function
        # runs importlib's Python code on every call.
        from flask import has_request_context, request

        self.counter = counter
        self._has_request_context = has_request_context
        self._request = request

    def begin(self, call: Call) -> _AccessWatch:
        """Note the resolved model and the backend; watch the answer."""
        if self._has_request_context():
            fields = self._request.environ.setdefault(ENVIRON_KEY, {})
        else:
            fields = {}
        fields.update(model=call.request.model, backend=call.route.name)
        if call.route.upstream is not None:
            fields["upstream"] = call.route.upstream
        if call.cache is not None:
            fields["cache"] = call.cache.status
        return _AccessWatch(fields, call, self.counter)


class _AccessWatch:
    def __init__(self, fields: dict[str, Any], call: Call, counter: TokenCounter | None) -> None:
        self.fields = fields
        self.call = call
        self.streamed = call.streamed
        self.counter = counter
        self.method: Method | None = None
        # The first route's: a fallback does not change how the tokens are counted.
        self.embedded = call.route.embedded
        if counter is not None and self.streamed:
            # Decided once: a stream's tokens are counted as it goes, holding at most
            # PENDING_BYTES (thousands of open streams), so the method must not change.
            # A whole answer's is decided in end(), only when the answer reported no usage.
            self.method = counter.usage_method(call.request.model, self.embedded)
        self.text = ""
        self.completion = 0
        self.seen = False
        # Relayed chunks' event bytes not counted yet: their text is parsed and counted a
        # batch at a time (one json.loads, one count), not chunk by chunk.
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def result(self, result: ChatResult) -> None:
        if result.model:
            self.fields["model"] = result.model
        self._reported(result.usage)
        self.text, self.seen = result.text, True

    def chunk(self, chunk: ChatChunk) -> None:
        if chunk.model:
            self.fields["model"] = chunk.model
        if chunk.usage:
            self._reported(chunk.usage)
        self.seen = True
        if self.counter is None or "usage" in self.fields:
            return
        if chunk.deferred and chunk.event is not None:
            self.pending.append(chunk.event)
            self.pending_bytes += len(chunk.event)
            if self.pending_bytes >= PENDING_BYTES:
                self._count_pending()
            return
        self.completion += self._count(chunk.text)

    def _count(self, text: str) -> int:
        assert self.counter is not None  # noqa: S101 - for the type checker: callers check
        return self.counter.count(
            self.call.request.model, text, self.call.route.embedded, self.method
        )

    def _count_pending(self) -> None:
        from chatservice.models import events_text

        if self.pending:
            text = events_text(self.pending)
            self.pending, self.pending_bytes = [], 0
            self.completion += self._count(text)

    def _reported(self, usage: Any) -> None:
        counts = usage_fields(usage)
        if counts:
            self.fields.update(counts, usage="reported")

    def moved(self, call: Call, err: Exception) -> None:
        # A fallback: the line names the upstream that answered (or failed last).
        self.call = call
        self.fields["backend"] = call.route.name
        if call.route.upstream is not None:
            self.fields["upstream"] = call.route.upstream

    def error(self, err: Exception) -> None:
        from chatservice.errors import ServiceError

        # A whole answer's error is the response's status; a stream's shows only here.
        if self.streamed and isinstance(err, ServiceError):
            self.fields["error"] = err.key

    def end(self, outcome: str) -> None:
        from chatservice.errors import ServiceError

        if self.counter is None or outcome == "failed" or "usage" in self.fields:
            return
        if not self.seen:
            return  # nothing was generated: no numbers to make
        req, embedded = self.call.request, self.call.route.embedded
        if self.method is None:
            self.method = self.counter.usage_method(req.model, self.embedded)
        try:
            self._count_pending()
            prompt = self.counter.count_request(req, embedded, self.method)
            if not self.streamed:
                self.completion = self.counter.count(req.model, self.text, embedded, self.method)
        except ServiceError:  # the embedded model's tokenizer could not be loaded
            return
        usage = "estimated" if self.method == "estimate" else "counted"
        self.fields.update(prompt_tokens=prompt, completion_tokens=self.completion, usage=usage)


def usage_fields(usage: Any) -> dict[str, int]:
    """``prompt_tokens`` and ``completion_tokens`` of an OpenAI ``usage`` object, those that
    are integers."""
    if not isinstance(usage, dict):
        return {}
    return {
        name: usage[name]
        for name in ("prompt_tokens", "completion_tokens")
        if isinstance(usage.get(name), int) and not isinstance(usage.get(name), bool)
    }


#: The access fields in the order a line shows them.
FIELDS = (
    "request_id",
    "face",
    "route",
    "method",
    "status",
    "duration_ms",
    "ip",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "backend",
)


class AccessLogMiddleware:
    """WSGI middleware: gives each request its id (environ and ``X-Request-ID`` header) and
    logs its access record once the response is known in full.

    A response with a Content-Length (every whole answer and error) is logged as soon as the
    app returns it, before the server sends it, so the line is there when the client has its
    answer. A stream is logged when the server closes its iterable: after the last byte, or
    when the client went away (``aborted``).
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Serve the request through the wrapped app and log it (see the class)."""
        started = environ[STARTED_KEY] = time.perf_counter()
        rid = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        fields: dict[str, Any] = {"request_id": rid}
        environ[ENVIRON_KEY] = fields
        status: list[int] = []
        sized: list[bool] = []

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [int(status_line.split(" ", 1)[0])]
            names = {name.lower() for name, _value in headers}  # one lower() per header
            sized[:] = ["content-length" in names]
            if "x-request-id" in names:
                headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            return start_response(status_line, [*headers, (REQUEST_ID_HEADER, rid)], exc_info)

        def done(finished: bool) -> None:
            if status:
                code = status[0]
            elif environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                code = 101  # the socket was served and closed; no HTTP response was written
            else:
                code = 500
            _log_access(environ, fields, code, started, finished)

        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            # flask-sock ends a served WebSocket by raising StopIteration out of the app.
            done(True)
            raise
        if sized and sized[0]:
            done(True)
            return body
        return _ClosingBody(body, done)


class _ClosingBody:
    """The app's response iterable, calling ``done(finished)`` once when it is closed.

    A generator (a stream's events) is handed to the server to iterate itself, without a
    wrapper frame per event: it was read to its end when it is exhausted at close time.
    Any other iterable is read through :meth:`__next__`, which notes its end.
    """

    def __init__(self, body: Iterable[bytes], done: Callable[[bool], None]) -> None:
        self._body = body
        self._iter = iter(body)
        self._done: Callable[[bool], None] | None = done
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        return self._iter if isinstance(self._iter, GeneratorType) else self

    def __next__(self) -> bytes:
        try:
            return next(self._iter)
        except StopIteration:
            self._finished = True
            raise

    def close(self) -> None:
        if isinstance(self._iter, GeneratorType):
            # Exhausted: its frame is gone; closed early by the server: not yet.
            self._finished = self._iter.gi_frame is None
        try:
            closer = getattr(self._body, "close", None)
            if closer is not None:
                closer()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done(self._finished)


def _log_access(
    environ: dict[str, Any], fields: dict[str, Any], status: int, started: float, finished: bool
) -> None:
    fields["method"] = environ.get("REQUEST_METHOD")
    fields["status"] = status
    fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    fields.setdefault("ip", environ.get("REMOTE_ADDR"))
    line = {name: fields.get(name) for name in FIELDS}
    if isinstance(line["model"], str) and len(line["model"]) > MAX_MODEL_CHARS:
        line["model"] = line["model"][:MAX_MODEL_CHARS] + "..."  # a client's string
    for name in ("upstream", "usage", "cache", "error"):
        if fields.get(name):
            line[name] = fields[name]
    if not finished:
        line["aborted"] = True
    if access_log.isEnabledFor(logging.INFO):
        # What Logger.info does, less the caller lookup (a walk up the stack for a file and
        # line that no access line shows).
        record = access_log.makeRecord(
            ACCESS_LOGGER,
            logging.INFO,
            "(unknown file)",
            0,
            _text_line(line),
            (),
            None,
            extra={"access": line},
        )
        access_log.handle(record)


def _text_line(line: dict[str, Any]) -> str:
    # ``line`` holds every one of FIELDS: one pass marks the missing ones ("-"), and the
    # f-string formats the rest (as str() would) without a call per field.
    shown = {name: "-" if value is None else value for name, value in line.items()}
    text = (
        f"{shown['method']} {shown['route']} {shown['status']} {line['duration_ms']:.1f}ms"
        f" id={shown['request_id']} face={shown['face']} ip={shown['ip']}"
        f" model={shown['model']}"
        f" tokens={shown['prompt_tokens']}/{shown['completion_tokens']}"
        f" backend={shown['backend']}"
    )
    for name in ("upstream", "usage", "cache", "error"):
        if name in line:
            text += f" {name}={line[name]}"
    if line.get("aborted"):
        text += " aborted"
    return text
