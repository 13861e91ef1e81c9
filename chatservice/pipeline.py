"""The one answer pipeline every face calls: a request in, a result or chunks out.

A face parses its body into a :class:`~chatservice.models.ChatRequest` (or a :class:`Draft`,
when the request's shape depends on the backend that answers) and calls :func:`answer`,
:func:`stream` or :func:`respond`; it then renders the result, the chunks and the errors in
its own envelope. Everything else happens here, once, in this order:

1. **model policy**: MODEL_ALIASES replaces the model, ALLOWED_MODELS may refuse it
   (``BadRequest`` ``model_not_allowed``);
2. **route**: the router (:mod:`chatservice.backends.router`) orders the upstreams serving
   the model (priority, weight, breakers; ``NotFound`` ``model_not_found`` when none does,
   503 ``upstreams_unavailable`` when every breaker is open); without ``[[upstreams]]``,
   :meth:`~chatservice.backends.Backends.select` picks the one upstream or the embedded
   model (BACKEND), as a pure function of the model, the client's key and the settings;
3. **the resolved request**: a new :class:`ChatRequest` (``dataclasses.replace``; the face's
   object is never changed), built for the route when the face gave a :class:`Draft`;
   **context**: a request that keeps history (``ChatRequest.trim``, or a draft with
   ``shorter()``) drops its oldest turns until it fits the model's context window
   (:mod:`chatservice.context`; ``BadRequest`` ``context_length_exceeded`` when it cannot);
4. **prompt log** (LOG_PROMPTS); **cache lookup** (CACHE_URL, :mod:`chatservice.cache`): a hit
   is answered from the cache instead of step 6, observers still see it (``Call.cache``);
5. **observers begin**: every :class:`Observer` sees the :class:`Call` before the backend is
   called; one may refuse it by raising a :class:`~chatservice.errors.ServiceError`;
6. **the call**: the backend's ``complete`` or ``stream`` (its own retries, before the first
   byte reached the client); when it fails before its first chunk with the upstream's fault,
   the call moves to the router's next candidate (the request rebuilt for it when the face
   gave a :class:`Draft`), at most UPSTREAM_FALLBACKS times, and each watch hears of it
   (:meth:`Watch.moved`);
7. **observers watch**: each one's :class:`Watch` sees the result, or every chunk as it goes
   by, an error, and how the call ended (``done``, ``failed``, ``disconnected`` when the
   client went away and the stream was closed).

Observers observe; they never wrap or replace a backend. The access log's model, backend,
tokens and error fields (:class:`chatservice.access_log.AccessRecord`) and the backend metrics
(:class:`chatservice.metrics.BackendMetrics`) are the two today.

Seams for later work (none is built here):

- **client API keys with budgets**: an observer whose :meth:`Observer.begin` admits the call
  or raises (429/402-like ``ServiceError``) and whose :meth:`Watch.end` settles the usage it
  saw, on ``disconnected`` too.
- **a response cache** (built: :mod:`chatservice.cache`): the lookup of step 4, and an
  observer, first of all, that fills it on ``end("done")``.
- **usage accounting**: an observer reading ``usage`` from results and chunks.
- **raw event bytes**: chunks travel through unchanged, whatever they carry (a face that
  relays the upstream's bytes still gets :class:`ChatChunk` objects, whose usage and finish
  reason the observers read).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flask import Response, jsonify

from chatservice.cache import Lookup, ResponseCache
from chatservice.context import ContextWindows, without_oldest_turn
from chatservice.errors import ErrorRenderer, ServiceError
from chatservice.models import ChatChunk, ChatRequest, ChatResult
from chatservice.settings import Secret
from chatservice.sse import event_stream
from chatservice.tokens import TokenCounter
from chatservice.web import request_language

if TYPE_CHECKING:
    from chatservice.backends import Backends, Route
    from chatservice.backends.router import Attempts
    from chatservice.i18n import Catalogs
    from chatservice.settings import Settings

log = logging.getLogger(__name__)

#: How a call ended: the whole answer was produced, an error ended it, or its consumer
#: closed it early (the client went away).
Outcome = Literal["done", "failed", "disconnected"]


class Draft(Protocol):
    """A request whose shape depends on the backend that answers (the conversations face
    sends a transcript to an upstream completion model, a chat to the embedded model).

    :ivar model: the model the client (or the face's settings) named; routing uses it.
    :ivar api_key: the client's own upstream key, or ``None``.
    """

    model: str
    api_key: Secret | None

    def build(self, embedded: bool) -> ChatRequest:
        """The request for the embedded model (``embedded``) or the upstream."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One call the pipeline makes, as observers see it.

    :ivar request: the resolved request the backend gets (model after MODEL_ALIASES).
    :ivar route: who answers it.
    :ivar asked_model: the model the client named, before MODEL_ALIASES.
    :ivar streamed: the answer comes as chunks (:meth:`Pipeline.stream`).
    :ivar attempts: the router's other candidates for a fallback (not for observers).
    :ivar draft: what the request was built from (its trimmed form), rebuilt for a
        fallback's route.
    :ivar cache: the cache lookup's verdict (``cache.status`` ``HIT``: no backend is
        called); ``None`` when the request is not cacheable or CACHE_URL is off.
    """

    request: ChatRequest
    route: Route
    asked_model: str
    streamed: bool
    attempts: Attempts | None = dataclasses.field(default=None, compare=False, repr=False)
    draft: ChatRequest | Draft | None = dataclasses.field(default=None, compare=False, repr=False)
    cache: Lookup | None = None

    def moved(self, route: Route) -> Call:
        """This call going to ``route`` instead (its request rebuilt for it)."""
        req = self.draft
        if req is None or isinstance(req, ChatRequest):
            req = self.request
        else:
            req = dataclasses.replace(req.build(route.embedded), model=self.request.model)
        return dataclasses.replace(self, request=req, route=route)


class Watch:
    """What an observer does with one call; every method is a no-op unless overridden.

    Methods run inside the request (a stream's chunks run where the response is written) and
    must not raise: a failing watch is logged and skipped, the answer goes on.
    """

    def result(self, result: ChatResult) -> None:
        """The whole answer of a non-streamed call."""

    def chunk(self, chunk: ChatChunk) -> None:
        """One chunk of a stream, before the face sees it."""

    def error(self, err: Exception) -> None:
        """The error that ended the call (a :class:`ServiceError` or any other)."""

    def moved(self, call: Call, err: Exception) -> None:
        """The attempt before failed with ``err`` before any chunk; ``call`` (same model,
        another route) is tried instead. Watches without this method are not told.
        """

    def end(self, outcome: Outcome) -> None:
        """The call is over; called exactly once, last."""


class Observer(Protocol):
    """Sees every call the pipeline makes (registered with :meth:`Pipeline.observe`)."""

    def begin(self, call: Call) -> Watch | None:
        """Start watching ``call`` before the backend is called: a :class:`Watch`, or
        ``None`` for no interest. Raising a ``ServiceError`` refuses the call (admission).
        """


class Pipeline:
    """The steps of the module docstring for one app.

    :param settings: LOG_PROMPTS.
    :param backends: the model policy, the route rule and the backends.
    :param catalogs: the messages errors are localized with.
    :param observers: the first observers; more with :meth:`observe`, in any order.
    """

    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        catalogs: Catalogs,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.catalogs = catalogs
        self.tokens = TokenCounter(backends.local.count_tokens)
        self.context = ContextWindows(settings, self.tokens)
        self.cache = ResponseCache.from_settings(settings)
        self._observers: list[Observer] = list(observers)
        if self.cache is not None:
            # First: a miss's lock is released even when a later observer refuses the call.
            self._observers.insert(0, self.cache)

    def observe(self, observer: Observer) -> None:
        """Add ``observer``: it sees every call from now on."""
        self._observers.append(observer)

    def plan(self, draft: ChatRequest | Draft, streamed: bool) -> Call:
        """Steps 1 to 4: the resolved request and its route, ``draft`` left unchanged.

        Raises ``BadRequest`` (``model_not_allowed``).
        """
        model = self.backends.policy.resolve(draft.model)
        # CLIENT_KEYS: on a keyless install a placeholder key must not reach OpenAI's API.
        api_key = draft.api_key if self.settings.accepts_client_keys else None
        attempts = self.backends.router.attempts(model, api_key)
        route = attempts.first()
        fitted, req = self._fit(draft, route, model, api_key)
        call = Call(req, route, draft.model, streamed, attempts, fitted)
        if self.settings.log_prompts:
            log.info("prompt model=%s messages=%r prompt=%r", draft.model, req.messages, req.prompt)
        if self.cache is not None:
            call = dataclasses.replace(call, cache=self.cache.lookup(call))
        return call

    def _fit(
        self, draft: ChatRequest | Draft, route: Route, model: str, api_key: Secret | None
    ) -> tuple[ChatRequest | Draft, ChatRequest]:
        """The draft as trimmed and its resolved request, fitting the context window when
        it keeps history.
        """
        fitted: list[ChatRequest | Draft] = [draft]

        def build(current: ChatRequest | Draft) -> ChatRequest:
            fitted[0] = current
            req = current if isinstance(current, ChatRequest) else current.build(route.embedded)
            if req.model == model and req.api_key is api_key:
                return req  # already resolved (no alias, no key to drop): nothing to copy
            return dataclasses.replace(req, model=model, api_key=api_key)

        def shorter(current: Any) -> Any:
            if isinstance(current, ChatRequest):
                return without_oldest_turn(current)
            return current.shorter()

        if isinstance(draft, ChatRequest) and not draft.trim:
            return draft, build(draft)
        if not isinstance(draft, ChatRequest) and not hasattr(draft, "shorter"):
            return draft, build(draft)
        upstream = route.upstream or ("local" if route.embedded else "default")
        req = self.context.fit(draft, build, shorter, upstream, route.embedded)
        return fitted[0], req

    def answer(self, draft: ChatRequest | Draft) -> ChatResult:
        """The whole answer to ``draft`` (its ``stream`` flag is not looked at).

        Raises the backend's ``ServiceError`` (502/503/504 for a failing upstream, 429 ...).
        """
        call = self.plan(draft, streamed=False)
        watches = self._begin(call)
        if call.cache is not None and call.cache.status == "HIT":
            result = call.cache.result()
            _tell(watches, "result", result)
            _tell(watches, "end", "done")
            return result
        while True:
            started = time.perf_counter()
            try:
                result = call.route.backend.complete(call.request)
                break
            except Exception as exc:
                following = _failed(call, exc, started)
                if following is None:
                    _tell(watches, "error", exc)
                    _tell(watches, "end", "failed")
                    raise
                call = _move(watches, call, following, exc)
        _succeeded(call, started)
        _tell(watches, "result", result)
        _tell(watches, "end", "done")
        return result

    def stream(self, draft: ChatRequest | Draft) -> Iterator[ChatChunk]:
        """The answer to ``draft`` in chunks, every one the backend yields (role-only and
        usage-only ones included). Planning errors raise here; the backend's own errors
        raise from the iterator. Closing the iterator stops the upstream request or the
        local generation.
        """
        call = self.plan(draft, streamed=True)
        relay = self._relay(call, self._begin(call))
        next(relay)
        return relay  # type: ignore[return-value]

    def localize(self, err: ServiceError, lang: str) -> str:
        """``err``'s message in ``lang`` (a catalog language, see :mod:`chatservice.i18n`)."""
        return self.catalogs.translate(err.key, lang, **err.params)

    def _begin(self, call: Call) -> list[Watch]:
        watches: list[Watch] = []
        try:
            for observer in self._observers:
                watch = observer.begin(call)
                if watch is not None:
                    watches.append(watch)
        except Exception as exc:
            _tell(watches, "error", exc)
            _tell(watches, "end", "failed")
            raise
        return watches

    def _relay(self, call: Call, watches: list[Watch]) -> Iterator[ChatChunk | None]:
        outcome: Outcome = "disconnected"  # unless the loop ends or fails
        chunks: Iterator[ChatChunk] | None = None
        try:
            # Primed by stream(): from here on even a close before the first chunk runs the
            # finally, so every watch gets its end (a budget is settled however it ends).
            yield None
            chunks, first, call = self._first_chunk(call, watches)
            seen = [watch.chunk for watch in watches]  # the per-chunk path: bound once
            for chunk in itertools.chain(first, chunks):
                for see in seen:
                    try:
                        see(chunk)
                    except Exception:  # noqa: BLE001 - as in _tell
                        log.exception("pipeline observer failed on a chunk")
                yield chunk
            outcome = "done"
        except Exception as exc:
            outcome = "failed"
            if chunks is not None and call.attempts is not None:
                call.attempts.broke(call.route, exc)  # after the first chunk: no fallback
            _tell(watches, "error", exc)
            raise
        finally:
            try:
                if chunks is not None and hasattr(chunks, "close"):  # a cached hit's has none
                    chunks.close()
            finally:
                _tell(watches, "end", outcome)

    def _first_chunk(
        self, call: Call, watches: list[Watch]
    ) -> tuple[Iterator[ChatChunk], list[ChatChunk], Call]:
        """The stream of the first route that yields a chunk (or ends), its first chunk
        (none if it ended at once) and the call as it went; a failure before the first
        chunk moves to the router's next candidate.
        """
        if call.cache is not None and call.cache.status == "HIT":
            return iter(call.cache.chunks()), [], call
        while True:
            started = time.perf_counter()
            chunks: Iterator[ChatChunk] | None = None
            try:
                # Inside the try: a backend may refuse at once (a full local queue).
                chunks = call.route.backend.stream(call.request)
                first = [next(chunks)]
            except StopIteration:
                first = []
            except Exception as exc:
                if chunks is not None:
                    chunks.close()  # type: ignore[attr-defined]
                following = _failed(call, exc, started)
                if following is None:
                    raise
                call = _move(watches, call, following, exc)
                continue
            _succeeded(call, started)
            assert chunks is not None  # noqa: S101 - for the type checker: next() ran
            return chunks, first, call


def _failed(call: Call, exc: Exception, started: float) -> Route | None:
    if call.attempts is None:
        return None
    return call.attempts.failed(call.route, exc, time.perf_counter() - started)


def _succeeded(call: Call, started: float) -> None:
    if call.attempts is not None:
        call.attempts.succeeded(call.route, time.perf_counter() - started)


def _move(watches: list[Watch], call: Call, route: Route, err: Exception) -> Call:
    moved = call.moved(route)
    for watch in watches:
        tell = getattr(watch, "moved", None)
        if tell is None:
            continue
        try:
            tell(moved, err)
        except Exception:  # noqa: BLE001 - as in _tell
            log.exception("pipeline observer %s failed", type(watch).__name__)
    return moved


def _tell(watches: list[Watch], method: str, value: Any) -> None:
    for watch in watches:
        try:
            getattr(watch, method)(value)
        except Exception:  # noqa: BLE001 - an observer must never break an answer
            log.exception("pipeline observer %s failed", type(watch).__name__)


# --- what the faces call ----------------------------------------------------------------------


def current_pipeline() -> Pipeline:
    """The :class:`Pipeline` of the app handling the current request."""
    from chatservice.service import current_service

    return current_service().pipeline


def answer(draft: ChatRequest | Draft) -> ChatResult:
    """:meth:`Pipeline.answer` of the current app."""
    return current_pipeline().answer(draft)


def stream(draft: ChatRequest | Draft) -> Iterator[ChatChunk]:
    """:meth:`Pipeline.stream` of the current app."""
    return current_pipeline().stream(draft)


def respond(
    req: ChatRequest,
    render_result: Callable[[ChatResult], Any],
    render_chunk: Callable[[ChatChunk], Any],
    render_error: ErrorRenderer,
    *,
    every_chunk: bool = False,
    wrap: Callable[[Iterator[ChatChunk]], Iterator[ChatChunk]] | None = None,
    final_event: Any = None,
) -> Response:
    """The answer to ``req`` as an HTTP response in the calling face's envelope.

    A whole answer is ``render_result(result)`` as JSON. A stream (``req.stream``) is
    ``text/event-stream`` (see
    :func:`chatservice.sse.event_stream`): chunks with nothing to show (a role-only first
    chunk) are dropped unless ``every_chunk`` (the OpenAI-compatible face relays them all);
    ``wrap`` sees the chunks on their way (the chat room stores the answer with it),
    ``final_event`` is written before ``[DONE]``, and an error after the first event becomes
    ``render_error(err, localized message)`` as the last event. Errors before the answer
    starts propagate to the app's error handler.
    """
    pipeline = current_pipeline()
    if not req.stream:
        return jsonify(render_result(pipeline.answer(req)))
    lang = request_language()
    chunks = pipeline.stream(req)
    if not every_chunk:
        chunks = _without_empty(chunks)
    if wrap is not None:
        chunks = wrap(chunks)

    def stream_error(err: ServiceError) -> Any:
        return render_error(err, pipeline.localize(err, lang))

    return event_stream(chunks, render_chunk, stream_error, final_event)


def _without_empty(chunks: Iterator[ChatChunk]) -> Iterator[ChatChunk]:
    try:
        for chunk in chunks:
            if not chunk.empty:
                yield chunk
    finally:
        chunks.close()  # type: ignore[attr-defined]
