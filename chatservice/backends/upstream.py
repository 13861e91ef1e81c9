"""The client of an OpenAI-compatible upstream (OpenAI, DeepSeek, vLLM, Ollama, LiteLLM).

One ``requests.Session`` per app, hence per worker, with a connection pool sized for the
worker's concurrency. Every call has three time limits: connecting (UPSTREAM_CONNECT_TIMEOUT),
the first byte of the answer (UPSTREAM_READ_TIMEOUT), and the silence between two chunks of a
stream (UPSTREAM_STREAM_IDLE_TIMEOUT); a silent upstream always ends in a 504 or an error
event. Connection failures and 502/503/504 answers are retried UPSTREAM_RETRIES times with
backoff and jitter by urllib3's ``Retry``, always before any byte reached the client. Calls
go through the key pool: a key the upstream refuses is marked and the call moves on to the
next usable key. Failures become :class:`~chatservice.errors.UpstreamError` with a stable key;
the upstream's own error text is never passed on, since OpenAI's 401 message quotes part of
the key. The upstream URL comes from the settings only: clients cannot choose it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis
import requests
import urllib3.exceptions
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from requests.adapters import HTTPAdapter
from requests.utils import should_bypass_proxies
from urllib3.util.retry import Retry

from chatservice.backends.keypool import FORBIDDEN, INVALID, QUOTA, RATE_LIMITED, KeyPool
from chatservice.errors import BadRequest, ServiceError, UpstreamError, UpstreamTimeout
from chatservice.models import ChatChunk, ChatRequest, ChatResult, choice_text
from chatservice.settings import Secret, Settings
from chatservice.sse import SSEDecoder
from chatservice.state import SharedState

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
_RETRIED_STATUSES = (502, 503, 504)


class UpstreamBackend:
    """Answers :class:`ChatRequest` through ``UPSTREAM_BASE_URL``'s ``/chat/completions`` and
    ``/completions`` endpoints, and lists its ``/models``.

    The key used is the request's own ``api_key`` when it brought one (that call only, no
    failover), else the next usable key of the pool, else none (Ollama and vLLM need none).
    """

    def __init__(self, settings: Settings, state: SharedState) -> None:
        self._base_url = settings.upstream_base_url
        self._timeout = (settings.upstream_connect_timeout, settings.upstream_read_timeout)
        self._idle_timeout = settings.upstream_stream_idle_timeout
        self.pool = KeyPool.from_settings(settings, state)
        self._proxies = outbound_proxies(settings)
        self._rpm = _upstream_rpm(settings)
        self._session = requests.Session()
        # Proxies come from the settings (which read the standard variables too); nothing
        # else from the environment, such as .netrc credentials, changes an upstream call.
        self._session.trust_env = False
        retry = Retry(
            total=settings.upstream_retries,
            connect=settings.upstream_retries,
            # A read timeout or a dropped answer may mean the upstream is still working on it:
            # not retried, and False keeps the original error (a timeout stays a timeout).
            read=False,
            status=settings.upstream_retries,
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
        adapter = HTTPAdapter(
            pool_connections=2, pool_maxsize=settings.upstream_pool_size, max_retries=retry
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def has_default_key(self) -> bool:
        """Whether API_KEY or KEY_FILE configured at least one key."""
        return len(self.pool) > 0

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def list_models(self, api_key: Secret | None = None) -> dict[str, Any]:
        """The upstream's ``GET /models`` body (an OpenAI list). Raises like :meth:`complete`."""
        response = self._call("GET", "/models", None, False, api_key)
        try:
            body = response.json()
        except ValueError:
            raise UpstreamError("upstream_bad_response") from None
        finally:
            response.close()
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise UpstreamError("upstream_bad_response")
        return body

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer. Raises ``UpstreamError``/``UpstreamTimeout``/``BadRequest``."""
        response = self._post(req, stream=False)
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice_text(choice, delta=False)
        except (ValueError, KeyError, IndexError, TypeError):
            raise UpstreamError("upstream_bad_response") from None
        finally:
            response.close()
        return ChatResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            model=body.get("model") or req.model,
            usage=body.get("usage"),
            raw=body,
        )

    def stream(self, req: ChatRequest) -> Iterator[ChatChunk]:
        """Chunks as the upstream sends them; closing the iterator closes the connection.

        Raises ``UpstreamTimeout`` when the upstream stays silent past the read timeout and
        ``UpstreamError`` (``upstream_interrupted``) when it ends without finishing.
        """
        response = self._post(req, stream=True)
        decoder = SSEDecoder()
        finished = False
        try:
            while True:
                try:
                    data = response.raw.read1(_READ_SIZE)
                except _STREAM_ERRORS as exc:
                    raise _stream_failure(exc) from None
                if not data:
                    break
                for event in decoder.feed(data):
                    if event.strip() == "[DONE]":
                        return
                    chunk = _parse_chunk(event, req.model)
                    finished = finished or chunk.finish_reason is not None
                    yield chunk
            if not finished:
                raise UpstreamError("upstream_interrupted")
        finally:
            response.close()

    def _post(self, req: ChatRequest, stream: bool) -> requests.Response:
        path = "/chat/completions" if req.kind == "chat" else "/completions"
        payload: dict[str, Any] = {**req.params, "model": req.model}
        if req.max_tokens is not None:
            payload["max_tokens"] = req.max_tokens
        if req.kind == "chat":
            payload["messages"] = req.messages
        else:
            payload["prompt"] = req.prompt
        if stream:
            payload["stream"] = True
        response = self._call("POST", path, payload, stream, req.api_key)
        if stream:
            _set_read_timeout(response, self._idle_timeout)
        return response

    def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        stream: bool,
        api_key: Secret | None,
    ) -> requests.Response:
        """One upstream call answered 200, moving over the pool's keys as they are refused."""
        self._count_call()
        if api_key is not None or not len(self.pool):
            response = self._send(method, path, payload, stream, api_key)
            if response.status_code != 200:
                raise _error_for(response)
            return response
        for key in self.pool.usable():
            response = self._send(method, path, payload, stream, key)
            if response.status_code == 200:
                self.pool.succeeded(key)
                return response
            reason, retry_after = _key_failure(response)
            if reason is None:
                raise _error_for(response)
            response.close()
            self.pool.failed(key, reason, retry_after)
        retry = self.pool.retry_after()
        raise ServiceError(
            "no_upstream_key", status=503, headers={"Retry-After": str(retry)} if retry else None
        )

    def _send(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        stream: bool,
        key: Secret | None,
    ) -> requests.Response:
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        try:
            return self._session.request(
                method,
                self._base_url + path,
                json=payload,
                headers=headers,
                timeout=self._timeout,
                stream=stream,
                proxies=self._proxies,
            )
        except (requests.ConnectTimeout, requests.ReadTimeout):
            log.warning("upstream timed out before answering")
            raise UpstreamTimeout() from None
        except requests.exceptions.ChunkedEncodingError:
            log.warning("upstream connection broke in the middle of its answer")
            raise UpstreamError("upstream_interrupted") from None
        except requests.RequestException as exc:
            # The exception text holds the upstream URL: log its type only.
            log.warning("upstream unreachable: %s", type(exc).__name__)
            raise UpstreamError("upstream_unreachable") from None

    def _count_call(self) -> None:
        if self._rpm is None:
            return
        limiter, item = self._rpm
        try:
            allowed = limiter.hit(item, "chatservice", "upstream")
        except (redis.RedisError, OSError):
            # Like the per-client limits: a storage outage lets calls through (logged).
            log.warning("UPSTREAM_RPM storage unreachable; call not counted")
            return
        if not allowed:
            raise ServiceError("server_busy", status=429, headers={"Retry-After": "60"})


def outbound_proxies(settings: Settings) -> dict[str, str] | None:
    """The proxies for upstream calls: CHAT_PROXY (or PROXY) for everything, else
    HTTPS_PROXY/HTTP_PROXY by the upstream URL's scheme unless NO_PROXY covers its host.
    """
    if settings.proxy:
        return {"http": settings.proxy, "https": settings.proxy}
    scheme = settings.upstream_base_url.split("://", 1)[0]
    proxy = settings.https_proxy if scheme == "https" else settings.http_proxy
    if not proxy or should_bypass_proxies(settings.upstream_base_url, settings.no_proxy):
        return None
    return {scheme: proxy}


def _upstream_rpm(
    settings: Settings,
) -> tuple[MovingWindowRateLimiter, RateLimitItemPerMinute] | None:
    if not settings.upstream_rpm:
        return None
    storage = storage_from_string(settings.ratelimit_storage_uri)
    return MovingWindowRateLimiter(storage), RateLimitItemPerMinute(settings.upstream_rpm)


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """From now on, each read of this response may wait ``seconds`` (the idle timeout)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _error_code(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError):
        return ""


def _key_failure(response: requests.Response) -> tuple[str | None, float | None]:
    """Why the upstream refused the key (a keypool reason) and its Retry-After, or None."""
    status = response.status_code
    if status == 401:
        return INVALID, None
    if status == 403:
        return FORBIDDEN, None
    if status == 429:
        if _error_code(response) == "insufficient_quota":
            return QUOTA, None
        retry = response.headers.get("Retry-After", "")
        return RATE_LIMITED, float(retry) if retry.isdigit() else None
    return None, None


def _error_for(response: requests.Response) -> UpstreamError | BadRequest:
    try:
        return _http_error(response)
    finally:
        response.close()


def _parse_chunk(event: str, model: str) -> ChatChunk:
    try:
        body = json.loads(event)
    except ValueError:
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
    if isinstance(exc, requests.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
        log.warning("upstream stream went silent past the read timeout")
        return UpstreamTimeout()
    log.warning("upstream stream broke: %s", type(exc).__name__)
    return UpstreamError("upstream_interrupted")


def _http_error(response: requests.Response) -> UpstreamError | BadRequest:
    """Map an upstream HTTP error status to ours, reading only its machine-readable code."""
    status = response.status_code
    code = _error_code(response)
    log.warning("upstream answered HTTP %s (%s)", status, code or "no code")
    if status in (401, 403):
        return UpstreamError("upstream_unauthorized", status=401)
    if status == 429:
        if code == "insufficient_quota":
            return UpstreamError("upstream_quota", status=429)
        retry = response.headers.get("Retry-After", "")
        headers = {"Retry-After": retry} if retry.isdigit() else None
        return UpstreamError("upstream_rate_limited", status=429, headers=headers)
    if code == "context_length_exceeded":
        return BadRequest("context_length_exceeded")
    if status in (400, 404, 413, 422):
        return BadRequest("upstream_bad_request", status_code=status)
    if status in (408, 504):
        return UpstreamTimeout()
    if status == 503:
        return UpstreamError("upstream_overloaded", status=503)
    return UpstreamError("upstream_error", status_code=status)
