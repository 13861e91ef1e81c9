"""The client of an OpenAI-compatible upstream (OpenAI, DeepSeek, vLLM, Ollama, LiteLLM).

One ``requests.Session`` per app, hence per worker, with a connection pool sized for the
worker's concurrency; every call carries the connect and read timeouts (the read timeout also
bounds each gap between stream chunks). Upstream failures become
:class:`~chatservice.errors.UpstreamError` with a stable key; the upstream's own error text is
never passed on, since OpenAI's 401 message quotes part of the key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from chatservice.errors import BadRequest, UpstreamError, UpstreamTimeout
from chatservice.models import ChatChunk, ChatRequest, ChatResult, choice_text
from chatservice.settings import Secret, Settings
from chatservice.sse import SSEDecoder
from chatservice.state import SharedState

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class UpstreamBackend:
    """Answers :class:`ChatRequest` through ``UPSTREAM_BASE_URL``'s ``/chat/completions`` and
    ``/completions`` endpoints.

    The key used is the request's own ``api_key`` when it brought one, else the first of
    ``API_KEY``, else none (local servers such as Ollama and vLLM need none).
    """

    def __init__(self, settings: Settings, state: SharedState) -> None:
        self._base_url = settings.upstream_base_url
        self._timeout = (settings.upstream_connect_timeout, settings.upstream_read_timeout)
        self._default_key: Secret | None = settings.api_keys[0] if settings.api_keys else None
        self._session = requests.Session()
        # Outbound proxies get their own settings later (issue 3); until then nothing from the
        # environment (.netrc credentials, proxy variables) changes where requests go.
        self._session.trust_env = False
        adapter = HTTPAdapter(
            pool_connections=2, pool_maxsize=settings.upstream_pool_size, max_retries=0
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    @property
    def has_default_key(self) -> bool:
        """Whether API_KEY configured at least one key."""
        return self._default_key is not None

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

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
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        key = req.api_key or self._default_key
        if key:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        try:
            response = self._session.post(
                self._base_url + path,
                json=payload,
                headers=headers,
                timeout=self._timeout,
                stream=stream,
            )
        except (requests.ConnectTimeout, requests.ReadTimeout):
            log.warning("upstream timed out before answering")
            raise UpstreamTimeout() from None
        except requests.RequestException as exc:
            # The exception text holds the upstream URL: log its type only.
            log.warning("upstream unreachable: %s", type(exc).__name__)
            raise UpstreamError("upstream_unreachable") from None
        if response.status_code != 200:
            try:
                raise _http_error(response)
            finally:
                response.close()
        return response


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
    code = ""
    try:
        error = response.json().get("error") or {}
        code = str(error.get("code") or error.get("type") or "")
    except (ValueError, AttributeError):
        pass
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
