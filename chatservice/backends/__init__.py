"""Where answers come from: the upstreams or the embedded model, chosen per request
(:mod:`chatservice.backends.router`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

from chatservice.backends.breaker import Breaker
from chatservice.backends.local import LocalBackend
from chatservice.backends.modelpolicy import ModelPolicy
from chatservice.backends.pool import SharedPools
from chatservice.backends.router import Router, Upstream
from chatservice.backends.upstream import UpstreamBackend, default_spec
from chatservice.models import ChatChunk, ChatRequest, ChatResult
from chatservice.settings import ConfigError, Settings
from chatservice.state import KeyValueStore
from chatservice.upstream_specs import UpstreamSpec


class Backend(Protocol):
    """What every backend offers; both raise :class:`~chatservice.errors.ServiceError`."""

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer."""

    def stream(self, req: ChatRequest) -> Iterator[ChatChunk]:
        """The answer in chunks, as they are generated; close it to stop the generation."""


BackendName = Literal["upstream", "local"]


@dataclasses.dataclass(frozen=True)
class Route:
    """Which backend answers a request: its ``name`` (the ``backend`` of the access log and
    the metrics' label), the ``backend`` itself and the name of the ``[[upstreams]]`` entry
    it belongs to (the access log's ``upstream``; ``None`` without a list).
    """

    name: BackendName
    backend: Backend
    upstream: str | None = None

    @property
    def embedded(self) -> bool:
        """True when the embedded model answers (some faces shape their request for it)."""
        return self.name == "local"


class Backends:
    """The app's backends and the BACKEND rule that picks one for each request.

    ``auto``: the embedded model when the request names its id (LOCAL_MODEL_ID), else the
    upstream when API_KEY is set or the request brings its own ``api_key`` (and CLIENT_KEYS
    accepts client keys), else the embedded model. ``openai``: always the upstream (keyless
    upstreams such as Ollama work too).
    ``local``: always the embedded model, request keys ignored.
    """

    def __init__(self, settings: Settings, state: KeyValueStore) -> None:
        self.mode = settings.backend
        self.policy = ModelPolicy(settings.allowed_models, settings.model_aliases)
        self.local = LocalBackend(settings)
        self.configured = bool(settings.upstreams)
        if self.configured:
            upstreams = _configured(settings, state, self.local)
            self.router = Router(upstreams, settings.upstream_fallbacks)
            remote = [u.route.backend for u in upstreams if not u.spec.local]
            #: The first remote upstream (:meth:`remote` lists them all).
            self.upstream = remote[0] if remote else UpstreamBackend(settings, state)
            self._local_route = Route("local", self.local, "local")
            self._upstream_route = Route("upstream", self.upstream)
        else:
            self.upstream = UpstreamBackend(settings, state)
            self._local_route = Route("local", self.local)
            self._upstream_route = Route("upstream", self.upstream)
            spec = default_spec(settings)
            self.router = Router(
                [
                    Upstream(spec, self._upstream_route, None, settings.upstream_models_ttl),
                    Upstream(_LOCAL_SPEC, self._local_route, None, settings.upstream_models_ttl),
                ],
                0,
                select=self.select,
            )

    def remote(self) -> list[Upstream]:
        """Every upstream reached over HTTP (not the embedded model), in configuration
        order: the ``[[upstreams]]`` entries, or the one ``default`` upstream without a list.
        """
        return [u for u in self.router.upstreams if not u.route.embedded]

    def select(self, model: str, api_key: object | None) -> Route:
        """The route for a request naming ``model`` (already resolved by the model policy)
        with the client's own ``api_key`` (or ``None``), by the BACKEND rule above.

        Pure: reads nothing but its arguments and the settings, changes nothing.
        """
        if self.mode == "auto" and model == self.local.model_id:
            return self._local_route
        if self.upstream_answers(api_key):
            return self._upstream_route
        return self._local_route

    def upstream_answers(self, api_key: object | None) -> bool:
        """True when, by the BACKEND rule above, the upstream answers a request with the
        client's own ``api_key`` (or ``None``) that does not name the embedded model's id."""
        if self.mode == "auto":
            return bool(api_key) or self.upstream.has_default_key
        return self.mode == "openai"


_LOCAL_SPEC = UpstreamSpec(name="local", type="local", models=("*",))


def _configured(settings: Settings, state: KeyValueStore, local: LocalBackend) -> list[Upstream]:
    """The ``[[upstreams]]`` list at run time. BACKEND=openai leaves the embedded model out,
    BACKEND=local keeps only it; without a ``type = "local"`` entry the embedded model still
    answers its own id (LOCAL_MODEL_ID), after every other upstream.
    """
    specs = list(settings.upstreams)
    if settings.backend == "openai":
        specs = [spec for spec in specs if not spec.local]
    elif settings.backend == "local":
        specs = [spec for spec in specs if spec.local] or [_LOCAL_SPEC]
        specs = [dataclasses.replace(spec, models=("*",)) for spec in specs]
    if settings.backend != "openai" and not any(spec.local for spec in specs):
        lowest = min((spec.priority for spec in specs), default=0) - 1
        specs.append(
            UpstreamSpec(name="local", type="local", models=(local.model_id,), priority=lowest)
        )
    upstreams = []
    pools = SharedPools(settings.upstream_pool_size, len(specs))
    for spec in specs:
        probe_ttl = (spec.connect_timeout or settings.upstream_connect_timeout) + (
            spec.read_timeout or settings.upstream_read_timeout
        )
        breaker = Breaker(
            spec.name,
            state,
            settings.upstream_breaker_failures,
            settings.upstream_breaker_cooldown,
            probe_ttl,
        )
        if spec.local:
            route = Route("local", local, spec.name)
            upstreams.append(Upstream(spec, route, breaker, settings.upstream_models_ttl))
            continue
        try:
            backend = UpstreamBackend(settings, state, spec, pools)
        except ConfigError as exc:  # an unreadable key_file
            raise ConfigError(f"UPSTREAMS: {spec.name}: key_file: {exc}") from None
        upstreams.append(
            Upstream(
                spec,
                Route("upstream", backend, spec.name),
                breaker,
                settings.upstream_models_ttl,
                _model_lister(backend),
            )
        )
    return upstreams


def _model_lister(backend: UpstreamBackend) -> Callable[[], list[str]]:
    def ids() -> list[str]:
        data = backend.list_models().get("data") or []
        return [
            entry["id"]
            for entry in data
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)
        ]

    return ids
