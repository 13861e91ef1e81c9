"""Prometheus metrics ("Operations"): defined per app, served at ``GET /metrics``.

Every app owns its metrics: :func:`init_app` (called by the factory) builds a
:class:`Metrics` with its own ``CollectorRegistry``, so the many apps a test session builds
never share a counter. The one exception is prometheus-client's multi-process mode, used when
``PROMETHEUS_MULTIPROC_DIR`` is set in the worker's environment: ``python3 app.py`` creates a
fresh private directory and sets it in the gunicorn master before the workers fork whenever
WORKERS > 1 (and marks dead workers with ``mark_process_dead`` from gunicorn's ``child_exit``
hook). Each worker then writes its values to memory-mapped files in that directory, the
metric objects are registered nowhere (the documented rule, or every sample would be exported
twice), and a scrape, whichever worker answers it, merges all the files with a
``MultiProcessCollector`` built for that scrape. Running ``gunicorn -w N 'app:app'`` directly
needs the same two things done by hand: the variable set to an empty directory before the
start, and the ``child_exit`` hook.

Exported, every name prefixed ``chatservice_``:

- ``requests_total{face, route, status}``: every answered request; ``face`` is the blueprint
  (``api``, ``chat``, ``openai_api``, ``chatroom``, ``ws``, ``conversations``, ``ops``,
  ``admin``; ``none`` when no route matched), ``route`` the URL rule (``/api/v1/chat``,
  ``/api/chatgpt/share/<share_id>``; ``<unmatched>`` for a 404, so a client cannot mint label
  values), ``status`` the HTTP status.
- ``request_duration_seconds{face, route}``: histogram of the time until the response starts
  (the whole answer for JSON; the first event for a stream, which is what a client waits for).
- ``backend_duration_seconds{backend}``: the upstream's (``backend="upstream"``) or the
  embedded model's (``local``) latency per call: the whole answer, or the first chunk of a
  stream; failures included. Answers from the response cache are ``backend="cache"``.
- ``backend_errors_total{backend, type}``: calls that failed, ``type`` being the error's
  stable key (``upstream_timeout``, ``upstream_error``, ``upstream_unauthorized``,
  ``no_upstream_key``, ``upstream_interrupted``, ``local_model_busy``...), whether the
  failure came before the answer or in the middle of a stream.
- ``tokens_total{backend, direction}``: ``in`` = prompt tokens, ``out`` = completion tokens,
  from the ``usage`` the backend reported (a stream reports it only when asked, with
  ``stream_options.include_usage``); cached answers count under ``backend="cache"``.
- ``upstream_attempts_total{upstream, result}`` and ``upstream_duration_seconds{upstream}``:
  every attempt on each upstream (``default`` and ``local`` without ``[[upstreams]]``, else
  the entries' names), ``result`` ``ok`` or the error key, so a fallback shows as a failed
  attempt on one upstream and an ``ok`` on the next.
- ``streams_in_flight``: ``text/event-stream`` responses started and not yet closed (gauge,
  summed over live workers).
- ``upstream_keys{upstream, state}``: each upstream's configured keys by state (``usable``,
  ``cooling``, ``disabled``; ``upstream`` as above, ``default`` without ``[[upstreams]]``),
  computed at scrape time from the key pools' snapshots; never a key or its id.
  The marks live in SHARED_STATE_URL's store, so with ``memory://`` and several workers
  this is the scraping worker's view; with Redis it is everyone's.
- ``client_key_requests_total{key, outcome}`` and ``client_key_tokens_total{key,
  direction}`` (AUTH_MODE=keys): calls and tokens per client key, labelled with the key's
  ``name`` (never the key); ``outcome`` is ``done``, ``failed`` or ``disconnected``.
- ``rate_limited_total{face}``: requests refused by the per-client limits (HOUR/MINUTE/
  SECOND_LIMIT), told apart from the upstream's own 429s; ``face="ws"`` counts WebSocket
  frames refused (each frame is one request there).

Upstream latency, errors and tokens are recorded by an observer of the answer pipeline
(:class:`BackendMetrics`, see :mod:`chatservice.pipeline`), which every face goes through:
nothing in the backends or the faces, and nothing wraps a backend.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from chatservice.access_log import STARTED_KEY
from chatservice.errors import ServiceError
from chatservice.models import ChatChunk, ChatResult

if TYPE_CHECKING:
    from chatservice.pipeline import Call

log = logging.getLogger(__name__)

#: Environment variable naming the directory of prometheus-client's multi-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXTENSION = "chatservice.metrics"
UNMATCHED = "<unmatched>"
KEY_STATES = ("usable", "cooling", "disabled")
#: Chat answers take from milliseconds (a cache, a 404) to minutes (a long local generation).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One app's metric objects and how to expose them.

    :param multiprocess: write to ``PROMETHEUS_MULTIPROC_DIR``'s files and expose the merge of
        every worker's (see the module docstring) instead of a registry of this app's own.
    """

    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        #: This app's registry; None in multi-process mode, where a scrape merges the files.
        self.registry = None if multiprocess else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "chatservice_requests",
            "Answered HTTP requests by face, URL rule and status.",
            ["face", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "chatservice_request_duration_seconds",
            "Seconds until the response started (a stream: its first event).",
            ["face", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_seconds = Histogram(
            "chatservice_backend_duration_seconds",
            "Seconds per backend call: the whole answer, or a stream's first chunk.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_errors = Counter(
            "chatservice_backend_errors",
            "Failed backend calls by backend and error key.",
            ["backend", "type"],
            registry=registry,
        )
        self.upstream_attempts = Counter(
            "chatservice_upstream_attempts",
            "Calls to each upstream by result (ok, or the error key), fallbacks included.",
            ["upstream", "result"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "chatservice_upstream_duration_seconds",
            "Seconds per upstream attempt: the whole answer, a stream's first chunk, or the"
            " failure.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "chatservice_tokens",
            "Tokens reported by the backends: in = prompt, out = completion.",
            ["backend", "direction"],
            registry=registry,
        )
        self.streams = Gauge(
            "chatservice_streams_in_flight",
            "Event streams started and not yet closed.",
            registry=registry,
            # Only live workers' streams are in flight; a dead worker's files are dropped.
            multiprocess_mode="livesum",
        )
        self.rate_limited = Counter(
            "chatservice_rate_limited",
            "Requests refused by the per-client rate limits.",
            ["face"],
            registry=registry,
        )
        self.client_requests = Counter(
            "chatservice_client_key_requests",
            "Answered calls per client key name (AUTH_MODE=keys) and outcome.",
            ["key", "outcome"],
            registry=registry,
        )
        self.client_tokens = Counter(
            "chatservice_client_key_tokens",
            "Tokens per client key name: in = prompt, out = completion.",
            ["key", "direction"],
            registry=registry,
        )
        self._key_states: KeyStates | None = None

    def watch_keys(self, pools: dict[str, Any]) -> None:
        """Export the key states of ``pools`` (upstream name -> its
        :class:`~chatservice.backends.keypool.KeyPool`)."""
        self._key_states = KeyStates(pools)
        if self.registry is not None:
            self.registry.register(self._key_states)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics text and its Content-Type, in the format ``accept`` asks for
        (Prometheus text by default, OpenMetrics when asked).
        """
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            if self._key_states is not None:
                registry.register(self._key_states)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: the label sets of the request path are
        few (URL rules, statuses, backends, error keys), and prometheus-client's lookup takes
        a lock and validates the values on every call."""
        key = (metric, values)  # metrics hash by identity
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_response(self, response: Response) -> None:
        """Count the current request's ``response`` (an ``after_request`` hook)."""
        # The request object once: each read through Flask's ``request`` proxy costs about
        # four Python calls, on every request.
        req = request._get_current_object()  # type: ignore[attr-defined]
        face = req.blueprint or "none"
        rule = req.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        status = response.status_code
        self.labelled(self.requests, face, route, str(status)).inc()
        # Since the request reached the app (the access log's clock, one for both).
        started = req.environ.get(STARTED_KEY)
        if started is not None:
            self.labelled(self.request_seconds, face, route).observe(time.perf_counter() - started)
        if status == 429 and _refused_by_limiter():
            self.rate_limited.labels(face).inc()
        if response.is_streamed and response.mimetype == "text/event-stream":
            self.streams.inc()
            # Closed by the WSGI server when the stream ends or the client goes away.
            response.call_on_close(self.streams.dec)

    def count_tokens(self, backend: str, usage: Any) -> None:
        """Add a backend's OpenAI ``usage`` (``prompt_tokens``/``completion_tokens``)."""
        if not isinstance(usage, dict):
            return
        for field, direction in (("prompt_tokens", "in"), ("completion_tokens", "out")):
            value = usage.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self.labelled(self.tokens, backend, direction).inc(value)


class KeyStates:
    """A collector: each upstream's keys by state, read from its pool's snapshot at scrape
    time."""

    def __init__(self, pools: dict[str, Any]) -> None:
        self._pools = pools

    def describe(self) -> list[GaugeMetricFamily]:
        """The family without samples, so registering does not read the store."""
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per upstream and state; nothing when the store holding the marks is
        down."""
        family = self._family()
        for name, pool in self._pools.items():
            try:
                rows = pool.snapshot()
            except ServiceError:
                log.warning("key states not exported: the shared state is unavailable")
                return
            for state in KEY_STATES:
                family.add_metric([name, state], sum(1 for row in rows if row["state"] == state))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "chatservice_upstream_keys",
            "Configured upstream keys by upstream and state.",
            labels=["upstream", "state"],
        )


class BackendMetrics:
    """The pipeline observer that records each backend call's latency, errors and tokens
    (a :class:`chatservice.pipeline.Observer`), labelled with the route's name.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def begin(self, call: Call) -> _BackendWatch:
        """Start the clock for ``call``; a cache hit is counted under ``cache``, apart."""
        hit = call.cache is not None and call.cache.status == "HIT"
        name = "cache" if hit else call.route.name
        watch = _BackendWatch(self._metrics, name, upstream_label(call))
        if hit:
            watch.cached = True  # no upstream attempt to count
        return watch


def upstream_label(call: Call) -> str:
    """The ``upstream`` label of ``call``'s route: its ``[[upstreams]]`` name, or
    ``default``/``local`` without a list."""
    route = call.route
    if route.upstream is not None:
        return route.upstream
    return "default" if route.name == "upstream" else "local"


class _BackendWatch:
    """One call: latency until the whole answer or the first chunk (or the failure)."""

    def __init__(self, metrics: Metrics, name: str, upstream: str) -> None:
        self._metrics = metrics
        self._name = name
        self._upstream = upstream
        self._started: float | None = time.perf_counter()
        self._attempt: float | None = self._started
        self.cached = False

    def moved(self, call: Call, err: Exception) -> None:
        self._attempted(_error_key(err))
        self._name, self._upstream = call.route.name, upstream_label(call)
        self._attempt = time.perf_counter()

    def result(self, result: ChatResult) -> None:
        self._observe()
        self._attempted("ok")
        self._metrics.count_tokens(self._name, result.usage)

    def chunk(self, chunk: ChatChunk) -> None:
        self._observe()
        if self._attempt is not None:
            self._attempted("ok")
        if chunk.usage:
            self._metrics.count_tokens(self._name, chunk.usage)

    def error(self, err: Exception) -> None:
        self._observe()
        key = _error_key(err)
        if self._attempt is not None:  # not after a stream's first chunk: that was "ok"
            self._attempted(key)
        self._metrics.labelled(self._metrics.backend_errors, self._name, key).inc()

    def _attempted(self, result: str) -> None:
        if self.cached:
            return
        started, self._attempt = self._attempt, None
        self._metrics.labelled(self._metrics.upstream_attempts, self._upstream, result).inc()
        if started is not None:
            seconds = time.perf_counter() - started
            self._metrics.labelled(self._metrics.upstream_seconds, self._upstream).observe(seconds)

    def end(self, outcome: str) -> None:
        pass

    def _observe(self) -> None:
        started, self._started = self._started, None
        if started is not None:  # once per call
            seconds = time.perf_counter() - started
            self._metrics.labelled(self._metrics.backend_seconds, self._name).observe(seconds)


def _error_key(err: Exception) -> str:
    return err.key if isinstance(err, ServiceError) else "internal_error"


def _refused_by_limiter() -> bool:
    """Whether flask-limiter refused this request (not an upstream's or a queue's 429)."""
    limiter = current_app.extensions.get("chatservice.limiter")
    current = getattr(limiter, "current_limit", None) if limiter is not None else None
    return bool(current is not None and current.breached)


def multiprocess_enabled() -> bool:
    """True when this process writes its metrics to ``PROMETHEUS_MULTIPROC_DIR``."""
    return bool(os.environ.get(MULTIPROC_ENV))


def current_metrics_of(app: Flask) -> Metrics:
    """The :class:`Metrics` of ``app`` (after :func:`init_app`)."""
    return app.extensions[EXTENSION]


def current_metrics() -> Metrics:
    """The :class:`Metrics` of the app handling the current request."""
    return current_app.extensions[EXTENSION]


def init_app(app: Flask, service: Any) -> Metrics:
    """Create ``app``'s metrics, install the response hook and observe ``service``'s pipeline.

    A request's latency counts from the access log's clock (``STARTED_KEY``, set by the
    access-log middleware when the request reaches the app), so a request the rate limiter
    refuses with 429 is timed too, whatever the order of the hooks.
    """
    metrics = Metrics(multiprocess=multiprocess_enabled())
    app.extensions[EXTENSION] = metrics
    service.pipeline.observe(BackendMetrics(metrics))
    metrics.watch_keys({u.name: u.route.backend.pool for u in service.backends.remote()})

    @app.after_request
    def count_response(response: Response) -> Response:
        metrics.observe_response(response)
        return response

    return metrics
