"""Operational endpoints, at the root (outside ROUTE), outside the rate limits and AUTH_MODE.

- ``GET /healthz``: liveness, ``{"status": "ok"}`` while the worker serves requests.
- ``GET /readyz``: readiness, 200 ``{"status": "ready", "checks": {...}}`` or 503
  ``{"status": "not_ready", "checks": {...}, "failing": [...]}``. Checks: ``store``
  (STORE_URL answers), ``shared_state`` (SHARED_STATE_URL's store, holding the key marks
  and chat rooms, answers) and ``backend`` (the default backend can answer: a usable upstream
  key, or a keyless upstream with BACKEND=openai, or, when the embedded model answers by
  default, its GGUF file present and llama-cpp-python installed, checked without loading
  anything). With ``[[upstreams]]``, ``backend`` is ``ok`` when at least one upstream can
  answer (else ``no_usable_upstream``) and ``upstreams`` gives each one's check by name
  (``ok``, ``breaker_open``, ``no_usable_key``, ``model_missing``, ``llama_cpp_missing``):
  the body says which upstreams are out while the others keep the instance ready. Each
  value is ``ok`` or a stable reason; never a URL, a path or a key.
- ``GET /metrics``: Prometheus text (OpenMetrics when the scraper asks for it), see
  :mod:`chatservice.metrics`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from chatservice.backends.keypool import KeyPool
from chatservice.backends.local import LocalBackend
from chatservice.backends.router import Upstream
from chatservice.errors import ServiceError
from chatservice.metrics import current_metrics
from chatservice.service import Service, current_service
from chatservice.state import KeyValueStore

log = logging.getLogger(__name__)

OK = "ok"


def create_blueprint() -> Blueprint:
    """The ``ops`` blueprint: ``/healthz``, ``/readyz`` and ``/metrics``."""
    blueprint = Blueprint("ops", __name__)
    blueprint.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    blueprint.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    blueprint.add_url_rule("/metrics", view_func=metrics, methods=["GET"])
    return blueprint


def healthz() -> ResponseReturnValue:
    """Liveness: the worker's hub is free to answer."""
    return jsonify(status="ok")


def readyz() -> ResponseReturnValue:
    """Readiness: 200 when every check is ``ok``, else 503 naming the failing ones."""
    service = current_service()
    checks = {
        "store": store_check(service.conversation_store),
        "shared_state": store_check(service.shared_state),
    }
    extra = {}
    if service.backends.configured:
        upstreams = {
            u.name: upstream_check(u, service.backends.local)
            for u in service.backends.router.upstreams
        }
        checks["backend"] = OK if OK in upstreams.values() else "no_usable_upstream"
        extra["upstreams"] = upstreams
    else:
        checks["backend"] = backend_check(service)
    failing = [name for name, result in checks.items() if result != OK]
    if failing:
        log.warning("not ready: %s", ", ".join(f"{name}={checks[name]}" for name in failing))
        return jsonify(status="not_ready", checks=checks, failing=failing, **extra), 503
    return jsonify(status="ready", checks=checks, **extra)


def metrics() -> Response:
    """The app's metrics (every worker's, in multi-process mode)."""
    body, content_type = current_metrics().exposition(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


def store_check(store: KeyValueStore) -> str:
    """``ok``, or ``unavailable`` when ``store.ping()`` raises ``store_unavailable``."""
    try:
        store.ping()
    except ServiceError:
        return "unavailable"
    return OK


def backend_check(service: Service) -> str:
    """Whether the backend answering requests by default (Backends' BACKEND rule) can answer.

    ``no_usable_key``: every configured key is disabled or cooling down (with the marks'
    store down the pool tries every key, so that counts as usable);
    ``model_missing`` / ``llama_cpp_missing``: the embedded model cannot be loaded.
    """
    backends = service.backends
    upstream = backends.upstream
    if not backends.upstream_answers(None):
        return local_model_check(backends.local)
    # BACKEND=openai with no key: a keyless upstream (Ollama, vLLM), which pool_check passes.
    return pool_check(upstream.pool)


def upstream_check(upstream: Upstream, local: LocalBackend) -> str:
    """Whether one ``[[upstreams]]`` entry can answer: ``ok``; ``breaker_open`` while its
    circuit breaker skips it; ``no_usable_key`` when every key it has is disabled or
    cooling down (a keyless one counts as usable); for the embedded model, as
    :func:`local_model_check`.
    """
    if upstream.breaker is not None and upstream.breaker.fresh().status()[0] == "open":
        return "breaker_open"
    if upstream.route.embedded:
        return local_model_check(local)
    return pool_check(upstream.route.backend.pool)


def pool_check(pool: KeyPool) -> str:
    """``ok`` when ``pool`` is empty (a keyless upstream) or has a usable key, else
    ``no_usable_key``; with the marks' store down the pool tries every key, so ``ok``.
    """
    if not len(pool):
        return OK
    try:
        # The snapshot, not usable(): a probe must not move the keys' round-robin turn.
        rows = pool.snapshot()
    except ServiceError:
        return OK  # the marks' store is down (shared_state names it)
    return OK if any(row["state"] == "usable" for row in rows) else "no_usable_key"


def local_model_check(local: LocalBackend) -> str:
    """``ok`` when the GGUF file (LOCAL_MODEL_PATH, else the bundled one) exists and
    llama-cpp-python is installed; neither is loaded.
    """
    try:
        path = local.model_file()
    except FileNotFoundError:
        return "model_missing"
    if not Path(path).is_file():
        return "model_missing"
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp_missing"
    return OK
