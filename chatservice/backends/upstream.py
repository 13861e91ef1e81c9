"""The client of an OpenAI-compatible upstream (OpenAI, DeepSeek, vLLM, Ollama, LiteLLM).

urllib3's connection pool, called directly: one pool per host per app, hence per worker,
sized for the worker's concurrency (UPSTREAM_POOL_SIZE) and shared by the upstreams on that
host (:class:`~chatservice.backends.pool.SharedPools`). Every call has three time limits:
connecting (UPSTREAM_CONNECT_TIMEOUT), the first byte of the answer (UPSTREAM_READ_TIMEOUT), and the
silence between two chunks of a stream (UPSTREAM_STREAM_IDLE_TIMEOUT); a silent upstream
always ends in a 504 or an error event. Connection failures (refused, or accepted and closed
before any byte of an answer) and 502/503/504 answers are retried UPSTREAM_RETRIES times with
backoff and jitter by urllib3's ``Retry``, always before any byte reached the client. Calls
go through the key pool: a key the upstream refuses is marked and the call moves on to the
next usable key. Failures become :class:`~chatservice.errors.UpstreamError` with a stable key;
the upstream's own error text is never passed on, since OpenAI's 401 message quotes part of
the key. The upstream URL comes from the settings only: clients cannot choose it.

Sizes are capped after decompression (urllib3 inflates at most one read's worth at a time):
a whole answer beyond :data:`MAX_ANSWER_BYTES` and one stream event beyond
:data:`MAX_EVENT_BYTES` are ``upstream_bad_response``, so a gzip bomb or an endless line
costs one read buffer, not the worker.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import redis
import urllib3
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from chatservice.backends.hangup import abort_on_hang_up
from chatservice.backends.idle import IdleTimer
from chatservice.backends.keypool import Failover, KeyPool, classify, read_key_file
from chatservice.backends.pool import SharedPools, opener
from chatservice.errors import (
    BadRequest,
    NotFound,
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
    context_length_exceeded,
)
from chatservice.jsonsafe import encoder, find_unsafe_value, surely_safe_text
from chatservice.models import ChatChunk, ChatRequest, ChatResult, choice_text
from chatservice.settings import Secret, Settings
from chatservice.sse import EventTooLarge, SSEDecoder
from chatservice.state import KeyValueStore
from chatservice.upstream_specs import UpstreamSpec

log = logging.getLogger(__name__)

#: Bytes of a whole (non-streamed) answer or error body, decompressed, before it is refused.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
#: Bytes of one stream event's data, decompressed, before the stream ends in an error.
MAX_EVENT_BYTES = 4 * 1024 * 1024

_READ_SIZE = 65536
_STREAM_ERRORS = (HTTPError, OSError, http.client.HTTPException)
_RETRIED_STATUSES = (502, 503, 504)
#: Hang-ups before the status line: the upstream took the connection and answered nothing.
_HUNG_UP = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
#: An event whose bytes show neither a finish reason, usage nor an error need not be parsed
#: when the face relays it unchanged (see :attr:`ChatRequest.relay`).
_NO_FINISH = (b'"finish_reason":null', b'"finish_reason": null')
_NO_USAGE = (b'"usage":null', b'"usage": null')


class _Retry(Retry):
    """urllib3's rules, plus: a connection closed before any byte of an answer is a
    connection error (the upstream ran nothing we could see), not a read error."""

    def _is_connection_error(self, err: Exception) -> bool:
        if isinstance(err, ProtocolError) and len(err.args) > 1:
            return isinstance(err.args[1], _HUNG_UP)
        return super()._is_connection_error(err)


class UpstreamBackend:
    """Answers :class:`ChatRequest` through ``UPSTREAM_BASE_URL``'s ``/chat/completions`` and
    ``/completions`` endpoints, and lists its ``/models``.

    The key used is the request's own ``api_key`` when it brought one (that call only, no
    failover), else the next usable key of the pool, else none (Ollama and vLLM need none).
    """

    def __init__(
        self,
        settings: Settings,
        state: KeyValueStore,
        spec: UpstreamSpec | None = None,
        pools: SharedPools | None = None,
    ) -> None:
        spec = spec or default_spec(settings)
        self.name = spec.name
        self._base_url = spec.base_url
        self._timeout = urllib3.Timeout(
            connect=spec.connect_timeout or settings.upstream_connect_timeout,
            read=spec.read_timeout or settings.upstream_read_timeout,
        )
        self._idle_timeout = spec.stream_idle_timeout or settings.upstream_stream_idle_timeout
        retries = settings.upstream_retries if spec.retries is None else spec.retries
        keys = list(spec.api_keys)
        if spec.key_file:
            keys.extend(read_key_file(spec.key_file))
        self.pool = KeyPool(keys, state, settings.auto_remove_keys, spec.name)
        self._model_map = dict(spec.model_map)
        self._client_keys = spec.client_keys
        self._headers = dict(spec.headers)
        self._query = "?" + urlencode(spec.query) if spec.query else ""
        # The default upstream keeps its old counter name; the others count on their own.
        self._rpm = _upstream_rpm(settings, "upstream" if spec.name == "default" else spec.name)
        self._retry = _Retry(
            total=retries,
            connect=retries,
            # A read timeout or a dropped answer may mean the upstream is still working on it:
            # not retried, and False keeps the original error (a timeout stays a timeout).
            read=False,
            status=retries,
            other=0,
            redirect=False,
            allowed_methods=None,  # POSTs too: a refused connection or a 503 ran nothing
            status_forcelist=_RETRIED_STATUSES,
            backoff_factor=0.25,
            backoff_jitter=0.25,
            backoff_max=4.0,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        # Proxies come from the settings (which read the standard variables too); urllib3
        # reads nothing else from the environment.
        proxy = spec.proxy or outbound_proxy(settings, spec.base_url)
        pools = pools or SharedPools(settings.upstream_pool_size, 1)
        self._http = pools.manager(proxy)
        self._open = opener(self._http, self._base_url)

    @property
    def has_default_key(self) -> bool:
        """Whether API_KEY or KEY_FILE configured at least one key."""
        return len(self.pool) > 0

    def close(self) -> None:
        """Close pooled connections (those it shares with upstreams on its host too)."""
        self._http.clear()

    def list_models(self, api_key: Secret | None = None) -> dict[str, Any]:
        """The upstream's ``GET /models`` body (an OpenAI list). Raises like :meth:`complete`."""
        body = _json(_read_body(self._call("GET", "/models", None, False, api_key)))
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise UpstreamError("upstream_bad_response")
        return body

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer (embeddings: :meth:`embed`). Raises
        ``UpstreamError``/``UpstreamTimeout``/``BadRequest``.
        """
        if req.kind == "embedding":
            return self.embed(req)
        text_bytes = _read_body(self._post(req, stream=False))
        body = _json(text_bytes)
        try:
            choice = body["choices"][0]
            text = choice_text(choice, delta=False)
        except (KeyError, IndexError, TypeError):
            raise UpstreamError("upstream_bad_response") from None
        return ChatResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            model=body.get("model") or req.model,
            usage=body.get("usage"),
            raw=body,
            clean=surely_safe_text(text_bytes, numbers=False),
        )

    def embed(self, req: ChatRequest) -> ChatResult:
        """The upstream's ``POST /embeddings`` answer for ``req.prompt`` (the ``input``),
        passed on unchanged in ``raw``; raises like :meth:`complete`.
        """
        payload = {**req.params, "model": req.model, "input": req.prompt}
        body = _json(_read_body(self._call("POST", "/embeddings", payload, False, req.api_key)))
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise UpstreamError("upstream_bad_response")
        return ChatResult(
            text="",
            finish_reason=None,
            model=body.get("model") or req.model,
            usage=body.get("usage"),
            raw=body,
        )

    def stream(self, req: ChatRequest) -> Iterator[ChatChunk]:
        """Chunks as the upstream sends them; closing the iterator closes the connection.

        With ``req.relay`` each chunk also carries the event's bytes (``ChatChunk.event``)
        and events showing no finish reason, usage or error are parsed only if their
        ``text`` or ``raw`` is read. Raises ``UpstreamTimeout`` when the upstream stays
        silent past the read timeout, ``UpstreamError`` (``upstream_interrupted``) when it
        ends without finishing and ``upstream_bad_response`` for an event that is not a
        chunk or is larger than :data:`MAX_EVENT_BYTES`.
        """
        response = self._post(req, stream=True)
        # From now on each read may wait the idle timeout, not the first answer's read timeout.
        idle = IdleTimer(_socket_of(response), self._idle_timeout)
        decoder = SSEDecoder(MAX_EVENT_BYTES)
        finished = False
        model = req.model
        parsed_one = False
        read1 = _reader(response)
        try:
            while True:
                try:
                    data = idle.read(read1, _READ_SIZE)
                    events = decoder.feed_bytes(data)
                except EventTooLarge:
                    log.warning("upstream sent a stream event over %d bytes", MAX_EVENT_BYTES)
                    raise UpstreamError("upstream_bad_response") from None
                except _STREAM_ERRORS as exc:
                    raise _stream_failure(exc) from None
                if not data:
                    break
                for event in events:
                    if event.strip() == b"[DONE]":
                        _read_end_if_here(response, read1)
                        return
                    if req.relay and parsed_one and _plain(event):
                        yield _RelayedChunk(event, model)
                        continue
                    chunk = _parse_chunk(event, req.model)
                    parsed_one, model = True, chunk.model
                    if req.relay and not _escapes_surrogate(event):
                        chunk.event = event
                    finished = finished or chunk.finish_reason is not None
                    yield chunk
            if not finished:
                raise UpstreamError("upstream_interrupted")
        finally:
            idle.close()
            _discard(response)

    def _post(self, req: ChatRequest, stream: bool) -> urllib3.BaseHTTPResponse:
        path = "/chat/completions" if req.kind == "chat" else "/completions"
        # The provider's own name for the public model (model_map), e.g. deepseek-chat.
        model = self._model_map.get(req.model, req.model)
        payload: dict[str, Any] = {**req.params, "model": model}
        if req.max_tokens is not None:
            payload["max_tokens"] = req.max_tokens
        if req.kind == "chat":
            payload["messages"] = req.messages
        else:
            payload["prompt"] = req.prompt
        if stream:
            payload["stream"] = True
        return self._call("POST", path, payload, stream, req.api_key)

    def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        stream: bool,
        api_key: Secret | None,
    ) -> urllib3.BaseHTTPResponse:
        """One upstream call answered 200, moving over the pool's keys as they are refused."""
        self._count_call()
        if not self._client_keys:
            api_key = None  # a client's key only goes where the operator allowed it
        body = None if payload is None else _encode(payload)
        if api_key is not None or not len(self.pool):
            response = self._send(method, path, body, stream, api_key)
            if response.status != 200:
                raise _error_for(response, payload)
            return response
        failover, refused = Failover(), None
        for key in self.pool.usable():
            response = self._send(method, path, body, stream, key)
            if response.status == 200:
                self.pool.succeeded(key)
                return response
            answer = _error_body(response)  # read once, the connection released
            refusal = classify(response.status, _error_object(answer), response.headers)
            error = _status_error(response.status, response.headers, answer, payload)
            if refusal is None or not failover.charge(refusal):
                raise error  # the request's fault: the upstream's own status
            refused = None if refusal.definite else error
            self.pool.failed(key, refusal, self._probe)
        retry = self.pool.retry_after()
        if refused is not None:  # the last key's refusal may be the request's own
            if retry and "Retry-After" not in refused.headers:
                refused.headers["Retry-After"] = str(retry)
            raise refused
        raise ServiceError(
            "no_upstream_key", headers={"Retry-After": str(retry)} if retry else None
        )

    def _probe(self, key: Secret) -> int | None:
        """The status of the upstream's ``GET /models`` with ``key`` (None: unreachable)."""
        try:
            response = self._send("GET", "/models", None, False, key)
        except ServiceError:
            return None
        _discard(response)
        return response.status

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        stream: bool,
        key: Secret | None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {
            **self._headers,
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": "chatservice",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        if key:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        try:
            # Until the answer's head arrives, a client hanging up ends the call (ClientGone).
            with abort_on_hang_up():
                return self._open(
                    method,
                    path + self._query,
                    body=body,
                    headers=headers,
                    retries=self._retry,
                    redirect=False,
                    timeout=self._timeout,
                    preload_content=False,
                )
        except (ReadTimeoutError, TimeoutError):
            log.warning("upstream timed out before answering")
            raise UpstreamTimeout() from None
        except MaxRetryError as exc:
            reason = exc.reason
            if isinstance(reason, ProxyError):
                reason = reason.original_error
            if isinstance(reason, ConnectTimeoutError) and not isinstance(
                reason, NewConnectionError
            ):
                log.warning("upstream timed out before answering")
                raise UpstreamTimeout() from None
            log.warning("upstream unreachable: %s", type(reason).__name__)
            raise UpstreamError("upstream_unreachable") from None
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            # The exception text holds the upstream URL: log its type only.
            log.warning("upstream unreachable: %s", type(exc).__name__)
            raise UpstreamError("upstream_unreachable") from None

    def _count_call(self) -> None:
        if self._rpm is None:
            return
        limiter, item, name = self._rpm
        try:
            allowed = limiter.hit(item, "chatservice", name)
        except (redis.RedisError, OSError):
            # Like the per-client limits: a storage outage lets calls through (logged).
            log.warning("UPSTREAM_RPM storage unreachable; call not counted")
            return
        if not allowed:
            raise ServiceError("server_busy", headers={"Retry-After": "60"})


def default_spec(settings: Settings) -> UpstreamSpec:
    """The one upstream today's variables describe (UPSTREAM_BASE_URL, API_KEY, KEY_FILE):
    named ``default``, serving every model, taking the keys clients bring.
    """
    return UpstreamSpec(
        name="default",
        base_url=settings.upstream_base_url,
        api_keys=settings.api_keys,
        key_file=settings.key_file,
        models=("*",),
        client_keys=True,
    )


def outbound_proxy(settings: Settings, base_url: str | None = None) -> str | None:
    """The proxy URL for calls to ``base_url`` (default UPSTREAM_BASE_URL): CHAT_PROXY (or
    PROXY) for everything, else HTTPS_PROXY/HTTP_PROXY by the URL's scheme unless NO_PROXY
    covers its host.
    """
    if settings.proxy:
        return settings.proxy
    url = base_url or settings.upstream_base_url
    scheme = url.split("://", 1)[0]
    proxy = settings.https_proxy if scheme == "https" else settings.http_proxy
    if not proxy:
        return None
    # requests' NO_PROXY matching (host suffixes, ports, CIDR blocks, "*") is the reference
    # curl users expect; it is imported only when a proxy is configured.
    from requests.utils import should_bypass_proxies

    if should_bypass_proxies(url, settings.no_proxy):
        return None
    return proxy


def _upstream_rpm(
    settings: Settings, name: str
) -> tuple[MovingWindowRateLimiter, RateLimitItemPerMinute, str] | None:
    if not settings.upstream_rpm:
        return None
    storage = storage_from_string(settings.shared_state_url)
    return MovingWindowRateLimiter(storage), RateLimitItemPerMinute(settings.upstream_rpm), name


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return encoder(allow_nan=False).encode(payload).encode("utf-8")
    except ValueError:
        # NaN or Infinity in a forwarded field (the faces refuse a client's before this):
        # not JSON, so no upstream could read it. The same 400 as theirs, naming the field.
        raise find_unsafe_value(payload) or BadRequest("bad_request") from None


def _socket_of(response: urllib3.BaseHTTPResponse) -> Any:
    """The socket ``response`` is read from (None when it has none)."""
    return getattr(getattr(response, "connection", None), "sock", None)


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Close ``response``'s connection unless its body was read to the end, then give the
    connection back to the pool (a closed one reconnects on its next use)."""
    if not response.isclosed():
        response.close()
    response.release_conn()


def _read_end_if_here(response: urllib3.BaseHTTPResponse, read1: Callable[[int], bytes]) -> None:
    """After a stream's ``[DONE]``: read the rest of its chunked body (the empty last chunk,
    which OpenAI-compatible servers send right after it) if it has already arrived, never
    waiting for it, so that :func:`_discard` gives the connection back to the pool instead of
    closing it: the next call saves a new connection (for a TLS upstream, a handshake).

    The socket is made non-blocking for this one read (urllib3 sets its timeout again when
    the connection is used next). More events, nothing yet, or anything odd leave the
    connection to be closed, as before.
    """
    sock = _socket_of(response)
    raw = getattr(response, "_fp", None)
    if sock is None or not isinstance(raw, http.client.HTTPResponse) or read1 != raw.read1:
        return  # no socket, or read through urllib3's decoder: close it, as before
    if response.isclosed():
        return  # already read to its end
    try:
        sock.settimeout(0.0)
        if read1(_READ_SIZE) == b"" and response.isclosed():
            return  # the body's end: the connection can serve the next call
    except (OSError, ValueError, http.client.HTTPException):
        pass
    # Not the end, or http.client gave up part-way (it may have closed only its reader):
    # close the connection itself, so it is never reused in an unknown state.
    response.close()


def _reader(response: urllib3.BaseHTTPResponse) -> Callable[[int], bytes]:
    """The ``read1`` of a stream's body: http.client's own when nothing is to be decoded.

    urllib3's ``read1`` wraps every read in an error-mapping context manager and a decoder
    buffer, which doubled the cost of a relayed chunk; http.client's reads the same chunked
    body and raises the same family of errors (``OSError``, ``HTTPException``).
    """
    raw = getattr(response, "_fp", None)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if isinstance(raw, http.client.HTTPResponse) and encoding == "identity":
        return raw.read1
    return response.read1


def _read_body(response: urllib3.BaseHTTPResponse) -> bytes:
    """The whole body, decompressed, at most :data:`MAX_ANSWER_BYTES`; releases the response.

    Raises ``upstream_bad_response`` beyond the cap or for a body that does not decode,
    ``upstream_interrupted`` when the connection breaks, ``UpstreamTimeout`` on silence.
    """
    try:
        raw = getattr(response, "_fp", None)
        length = response.length_remaining
        if (
            isinstance(raw, http.client.HTTPResponse)
            and length is not None
            and length <= MAX_ANSWER_BYTES
            and "Content-Encoding" not in response.headers
        ):
            # A plain body of a Content-Length within the cap: http.client reads exactly that
            # (and raises IncompleteRead when the connection ends first), for some eighty
            # Python calls less than urllib3's capped, buffered read below.
            body = raw.read()
        else:
            # urllib3 >= 2.6 inflates at most the requested amount, so a compressed bomb
            # costs MAX_ANSWER_BYTES at most before it is refused, never its whole inflated
            # size; so does a body of unknown length.
            body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            log.warning("upstream answer over %d bytes", MAX_ANSWER_BYTES)
            raise UpstreamError("upstream_bad_response")
    except DecodeError:
        log.warning("upstream answer does not decode (Content-Encoding)")
        raise UpstreamError("upstream_bad_response") from None
    except (ReadTimeoutError, TimeoutError):  # urllib3's, or http.client's socket timeout
        log.warning("upstream timed out in the middle of its answer")
        raise UpstreamTimeout() from None
    except _STREAM_ERRORS:
        log.warning("upstream connection broke in the middle of its answer")
        raise UpstreamError("upstream_interrupted") from None
    finally:
        _discard(response)
    return body


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError("upstream_bad_response") from None


def _error_code(body: bytes) -> str:
    error = _error_object(body)
    return str(error.get("code") or error.get("type") or "")


#: OpenAI's (and vLLM's, LiteLLM's) wording of a context overflow: the two token counts.
_CONTEXT_SIZES = re.compile(r"maximum context length is (\d+) tokens.*?(\d+) tokens", re.S)


def _context_sizes(body: bytes) -> tuple[int | None, int | None]:
    """The model's context size and the request's token count from an overflow message.

    Only the two numbers are read; the rest of the upstream's text is never passed on.
    """
    try:
        message = str((json.loads(body).get("error") or {}).get("message") or "")
    except (ValueError, AttributeError, RecursionError):
        return None, None
    match = _CONTEXT_SIZES.search(message[:2000])
    return (int(match[1]), int(match[2])) if match else (None, None)


def _error_body(response: urllib3.BaseHTTPResponse) -> bytes:
    """An error answer's body (for its machine-readable code), b"" when it cannot be read."""
    try:
        return _read_body(response)
    except ServiceError:
        return b""


def _error_object(body: bytes) -> dict[str, Any]:
    """The OpenAI ``error`` object of an error answer's body (``{}`` when it has none)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return {}
    return error if isinstance(error, dict) else {}


class _RelayedChunk(ChatChunk):
    """A plain content chunk relayed as its event bytes: ``text`` and ``raw`` are parsed
    from them only when something reads them (the log and metrics read ``model`` and
    ``usage``, which a plain chunk does not carry, so usually nothing does)."""

    deferred = True

    def __init__(self, event: bytes, model: str) -> None:  # noqa: D107
        self.event, self.model, self.finish_reason, self.usage = event, model, None, None

    def __getattr__(self, name: str) -> Any:
        if name not in ("text", "raw"):
            raise AttributeError(name)
        try:
            parsed = _parse_chunk(self.event, self.model)
            self.text, self.raw = parsed.text, parsed.raw
        except ServiceError:  # relayed as it came; only its reader finds it unreadable
            self.text, self.raw = "", {}
        return getattr(self, name)


def _escapes_surrogate(event: bytes) -> bool:
    """Whether an event's JSON escapes a UTF-16 surrogate (relayed as bytes, a lone one would
    reach the client; parsed, :class:`ChatChunk` replaces it)."""
    return b"\\ud" in event or b"\\uD" in event


def _plain(event: bytes) -> bool:
    """True when an event's bytes show it is a plain content chunk: every finish reason
    null, no usage or a null one, no error, no escaped UTF-16 surrogate (a lone one is
    replaced when the chunk is parsed; a pair is rare enough to parse too). Cheap ``bytes``
    checks, no parse."""
    finishes = event.count(b'"finish_reason"')
    return (
        not _escapes_surrogate(event)
        and finishes > 0
        and finishes == event.count(_NO_FINISH[0]) + event.count(_NO_FINISH[1])
        and event.count(b'"usage"') == event.count(_NO_USAGE[0]) + event.count(_NO_USAGE[1])
        and b'"error"' not in event
    )


def _parse_chunk(event: bytes, model: str) -> ChatChunk:
    try:
        body = json.loads(event.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        raise UpstreamError("upstream_bad_response") from None
    if not isinstance(body, dict):
        raise UpstreamError("upstream_bad_response")
    if "error" in body:
        log.warning("upstream sent an error event")
        raise UpstreamError("upstream_error", status_code=200)
    choices = body.get("choices") or []
    text, finish_reason = "", None
    if choices:  # a usage-only chunk (stream_options.include_usage) has none
        try:
            text = choice_text(choices[0], delta=True)
            finish_reason = choices[0].get("finish_reason")
        except (KeyError, TypeError, AttributeError):
            raise UpstreamError("upstream_bad_response") from None
    return ChatChunk(
        text=text,
        model=body.get("model") or model,
        finish_reason=finish_reason,
        usage=body.get("usage"),
        raw=body,
    )


def _stream_failure(exc: BaseException) -> UpstreamError:
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        log.warning("upstream stream went silent past the read timeout")
        return UpstreamTimeout()
    log.warning("upstream stream broke: %s", type(exc).__name__)
    return UpstreamError("upstream_interrupted")


def _error_for(
    response: urllib3.BaseHTTPResponse, payload: dict[str, Any] | None = None
) -> ServiceError:
    """Map an upstream HTTP error answer to ours (reads and releases it)."""
    return _status_error(response.status, response.headers, _error_body(response), payload)


def _status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    payload: dict[str, Any] | None = None,
) -> ServiceError:
    """Map an upstream HTTP error status to ours, reading only its machine-readable code
    (and the token counts of a context overflow). A 404 stays a 404 (``model_not_found``,
    naming the payload's model): clients tell an unknown model by that status.
    """
    code = _error_code(body)
    log.warning("upstream answered HTTP %s (%s)", status, code or "no code")
    if status == 401:
        return UpstreamError("upstream_unauthorized")
    if status == 403:
        # Often a refusal of the request (a model restriction, moderation), not of the key.
        return UpstreamError("upstream_refused")
    if status == 429:
        if code == "insufficient_quota":
            return UpstreamError("upstream_quota")
        retry = headers.get("Retry-After", "")
        extra = {"Retry-After": retry} if retry.isdigit() else None
        return UpstreamError("upstream_rate_limited", headers=extra)
    if code == "context_length_exceeded":
        return context_length_exceeded(*_context_sizes(body))
    if status == 404:
        model = str((payload or {}).get("model", ""))
        return NotFound("model_not_found", field="model", model=model)
    if status in (400, 413, 422):
        return BadRequest("upstream_bad_request", status_code=status)
    if status in (408, 504):
        return UpstreamTimeout()
    if status == 503:
        return UpstreamError("upstream_overloaded")
    return UpstreamError("upstream_error", status_code=status)
