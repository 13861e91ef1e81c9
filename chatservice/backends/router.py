"""Several upstreams behind one endpoint: candidates by model, priority groups, weighted
choice among healthy members, fallback to the next candidate, a circuit breaker each.

For a request's model (already through MODEL_ALIASES and ALLOWED_MODELS) the candidates are
the upstreams serving it (:mod:`chatservice.upstream_specs`: ``models`` patterns, ``model_map``
names, or the upstream's own ``/models`` list). Priority groups are tried highest first; in a
group the first choice is by weight among the members whose breaker is not open (smooth
weighted round-robin, nginx's algorithm: over any run of calls each member's share is its
weight's, exactly, per worker), then the rest of the group by weight, then the next group.

The pipeline tries the first candidate; when it fails before its first byte with an
upstream's fault (:func:`is_upstream_fault`: unreachable, a timeout, a 5xx, a 429, a refused
key, a 403 refusing the request, a 404 for the model) it moves to the next one, at most
UPSTREAM_FALLBACKS times. A client's fault (400 and other 4xx) is answered as it is. After
the first chunk of a stream nothing moves: the client already has part of the answer.

Without ``[[upstreams]]`` there is exactly one upstream, ``default``, from UPSTREAM_BASE_URL,
API_KEY and KEY_FILE, and the BACKEND rule of :meth:`Backends.select` picks it or the
embedded model, as before: no fallback, and no breaker, since there is nowhere else to go.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from chatservice.backends.breaker import Breaker
from chatservice.errors import NotFound, ServiceError
from chatservice.upstream_specs import UpstreamSpec

if TYPE_CHECKING:
    from chatservice.backends import Route

log = logging.getLogger(__name__)

#: Seconds an upstream whose ``/models`` could not be fetched waits before the next try.
MODELS_RETRY = 30.0
#: Latencies kept per upstream for the admin view's median.
LATENCY_WINDOW = 1000
#: Seconds a model's candidates are kept, and how many models are kept.
GROUPS_TTL, GROUPS_CACHED = 5.0, 1024


#: Faults of one provider with this request that say nothing about its health: another
#: upstream may answer, but the breaker is not charged (one client's request must not open
#: every breaker). A 403 ``upstream_refused`` is a provider's model restriction or moderation.
REQUEST_SPECIFIC = frozenset({"model_not_found", "upstream_refused"})


def is_upstream_fault(err: BaseException) -> bool:
    """Whether ``err`` is the upstream's fault, so another upstream may answer instead: no
    connection, a timeout, a 5xx, a 429, a refused key (401), a refused request (403) or a
    404 (that provider does not know the model). A client's 4xx and anything not a
    ``ServiceError`` are not.
    """
    if not isinstance(err, ServiceError):
        return False
    if err.status >= 500 or err.status == 429 or err.key == "upstream_unauthorized":
        return True
    # Raised by a backend (the router's own "no upstream serves it" is raised before any).
    return err.key in REQUEST_SPECIFIC


@dataclasses.dataclass
class UpstreamStats:
    """One worker's counts since it started: attempts, failed attempts, latencies (s)."""

    requests: int = 0
    failures: int = 0
    latencies: deque[float] = dataclasses.field(
        default_factory=lambda: deque(maxlen=LATENCY_WINDOW)
    )

    def p50_ms(self) -> float | None:
        """The median latency in milliseconds, or None before the first answer."""
        return round(statistics.median(self.latencies) * 1000, 1) if self.latencies else None


class Upstream:
    """One upstream at run time: its spec, its route, its breaker (None: no breaker) and
    its stats; ``list_models`` fetches its ``/models`` ids when its spec names none.
    """

    def __init__(
        self,
        spec: UpstreamSpec,
        route: Route,
        breaker: Breaker | None,
        models_ttl: float,
        list_models: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.route = route
        self.breaker = breaker
        self.stats = UpstreamStats()
        self._models_ttl = models_ttl
        self._list_models = list_models
        self._fetched: tuple[float, frozenset[str]] = (0.0, frozenset())

    def serves(self, model: str) -> bool:
        """Whether ``model`` is one of this upstream's public names."""
        spec = self.spec
        if model in spec.model_map or any(fnmatchcase(model, p) for p in spec.models):
            return True
        return not spec.models and model in self.fetched_models()

    def public_models(self) -> list[str]:
        """The names it serves that can be listed: ``models`` without wildcards, those its
        ``/models`` lists matching its wildcard patterns (or all when it names none), and
        the ``model_map`` names.
        """
        spec = self.spec
        names = [p for p in spec.models if not _wildcard(p)]
        patterns = [p for p in spec.models if _wildcard(p)]
        if (patterns or not spec.models) and self._list_models is not None:
            fetched = sorted(self.fetched_models())
            names += [
                m for m in fetched if not patterns or any(fnmatchcase(m, p) for p in patterns)
            ]
        return [*names, *spec.model_map]

    def fetched_models(self) -> frozenset[str]:
        """Its ``/models`` ids, fetched when first needed and kept UPSTREAM_MODELS_TTL s."""
        if self._list_models is None:
            return frozenset()
        expires, models = self._fetched
        now = time.monotonic()
        if now < expires:
            return models
        try:
            models = frozenset(self._list_models())
            self._fetched = (now + self._models_ttl, models)
        except ServiceError as err:
            log.warning("models of upstream %s not fetched: %s", self.name, err.key)
            self._fetched = (now + MODELS_RETRY, frozenset())
            return frozenset()
        return models

    def snapshot(self) -> dict[str, Any]:
        """The admin view's entry (see :meth:`Router.snapshot`)."""
        from urllib.parse import urlsplit

        backend = self.route.backend
        breaker = self.breaker.fresh() if self.breaker is not None else None
        state, until = breaker.status() if breaker is not None else ("closed", None)
        pool = getattr(backend, "pool", None)
        return {
            "name": self.name,
            "type": self.spec.type,
            "host": urlsplit(self.spec.base_url).hostname if self.spec.base_url else None,
            "models": list(self.spec.models) or None,
            "model_map": dict(self.spec.model_map),
            "priority": self.spec.priority,
            "weight": self.spec.weight,
            "breaker": state,
            "breaker_until": until,
            "keys": pool.snapshot() if pool is not None else [],
            "requests": self.stats.requests,
            "failures": self.stats.failures,
            "latency_p50_ms": self.stats.p50_ms(),
        }


def _wildcard(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class Router:
    """Orders the upstreams serving a model and hands out :class:`Attempts`.

    :param upstreams: every upstream, the embedded model's included.
    :param fallbacks: how many times a call may move on (UPSTREAM_FALLBACKS).
    :param select: the single-upstream rule (BACKEND) when no list is configured, else None.
    """

    def __init__(
        self,
        upstreams: list[Upstream],
        fallbacks: int,
        select: Callable[[str, object | None], Route] | None = None,
    ) -> None:
        self.upstreams = upstreams
        self._fallbacks = fallbacks
        self._select = select
        self._by_route = {id(u.route): u for u in upstreams}
        # Smooth weighted round-robin: each group's members' current weights.
        self._current: dict[tuple[str, ...], dict[str, float]] = {}
        # model -> (when, its candidates in priority groups): matching names on every call
        # would cost more than the call's own routing.
        self._groups: dict[str, tuple[float, list[list[Upstream]]]] = {}

    def attempts(self, model: str, api_key: object | None) -> Attempts:
        """The ordered candidates for ``model``. Raises ``NotFound`` ``model_not_found``
        when no upstream serves it.
        """
        if self._select is not None:
            route = self._select(model, api_key)
            return Attempts(self, [[self._by_route[id(route)]]], 0)
        groups = self._candidates(model)
        if not groups:
            raise NotFound("model_not_found", field="model", model=model)
        return Attempts(self, groups, self._fallbacks)

    def upstream_of(self, route: Route) -> Upstream:
        """The upstream ``route`` belongs to."""
        return self._by_route[id(route)]

    def snapshot(self) -> list[dict[str, Any]]:
        """Every upstream: ``name``, ``type``, ``host`` (of its base URL), ``models``,
        ``model_map``, ``priority``, ``weight``, ``breaker`` (closed/open/half_open),
        ``breaker_until`` (epoch s), ``keys`` (masked, see the key pool), ``requests``,
        ``failures`` and ``latency_p50_ms`` (this worker's, since it started).
        """
        return [u.snapshot() for u in self.upstreams]

    def _candidates(self, model: str) -> list[list[Upstream]]:
        """The upstreams serving ``model`` by priority group, highest first (kept a few
        seconds per model, at most :data:`GROUPS_CACHED` models)."""
        now = time.monotonic()
        cached = self._groups.get(model)
        if cached is not None and now - cached[0] < GROUPS_TTL:
            return cached[1]
        serving = [u for u in self.upstreams if u.serves(model)]
        groups = [
            [u for u in serving if u.spec.priority == priority]
            for priority in sorted({u.spec.priority for u in serving}, reverse=True)
        ]
        if len(self._groups) >= GROUPS_CACHED:
            self._groups.clear()  # clients choose model names: keep the memory bounded
        self._groups[model] = (now, groups)
        return groups

    def ordered(self, groups: list[list[Upstream]]) -> Iterator[Upstream]:
        """``groups``' healthy members in the order they are tried: per group, the weighted
        choice, then the rest by weight. Lazy: most calls take the first one only, so the
        rest of the order (and the other groups' health) is worked out on a fallback only.
        """
        for group in groups:
            if len(group) == 1:
                yield group[0]  # its breaker is asked once, by Attempts, when it is reached
                continue
            healthy = [u for u in group if u.breaker is None or u.breaker.available()]
            if not healthy:
                continue
            first = self._pick(healthy)
            yield first
            yield from sorted((u for u in healthy if u is not first), key=lambda u: -u.spec.weight)

    def _pick(self, members: list[Upstream]) -> Upstream:
        if len(members) == 1:
            return members[0]
        current = self._current.setdefault(tuple(u.name for u in members), {})
        total = 0.0
        for u in members:
            current[u.name] = current.get(u.name, 0.0) + u.spec.weight
            total += u.spec.weight
        chosen = max(members, key=lambda u: current[u.name])
        current[chosen.name] -= total
        return chosen


class Attempts:
    """One call's way through its candidates (used by the pipeline, one per call)."""

    def __init__(self, router: Router, groups: list[list[Upstream]], fallbacks: int) -> None:
        self._router = router
        self._groups = groups
        self._queue = router.ordered(groups)
        self._left = fallbacks

    def first(self) -> Route:
        """The first route whose breaker admits the call. Raises ``ServiceError``
        ``upstreams_unavailable`` (503, Retry-After) when every candidate's breaker is open.
        """
        route = self._next()
        if route is None:
            raise ServiceError("upstreams_unavailable", headers=self._retry_after_header())
        return route

    def failed(self, route: Route, err: BaseException, seconds: float) -> Route | None:
        """The attempt on ``route`` failed with ``err`` before its first byte: record it and
        return the route to try next, or None (not the upstream's fault, or none left).
        """
        self.broke(route, err, seconds)
        if not is_upstream_fault(err) or self._left <= 0:
            return None
        self._left -= 1
        following = self._next()
        if following is not None:
            log.warning(
                "upstream %s failed (%s); trying %s",
                self._router.upstream_of(route).name,
                getattr(err, "key", type(err).__name__),
                self._router.upstream_of(following).name,
            )
        return following

    def succeeded(self, route: Route, seconds: float) -> None:
        """``route`` answered (a whole answer, or a stream's first chunk) in ``seconds``."""
        upstream = self._router.upstream_of(route)
        upstream.stats.requests += 1
        upstream.stats.latencies.append(seconds)
        if upstream.breaker is not None:
            upstream.breaker.succeeded()

    def broke(self, route: Route, err: BaseException, seconds: float | None = None) -> None:
        """``route`` failed with ``err`` (before or after its first byte)."""
        upstream = self._router.upstream_of(route)
        if seconds is not None:
            upstream.stats.requests += 1
        upstream.stats.failures += 1
        # A 404 for the model or a 403 for the request says nothing about the upstream's health.
        health = is_upstream_fault(err) and getattr(err, "key", "") not in REQUEST_SPECIFIC
        if upstream.breaker is not None and health:
            upstream.breaker.failed()

    def _next(self) -> Route | None:
        for upstream in self._queue:
            if upstream.breaker is None or upstream.breaker.admit():
                return upstream.route
        return None

    def _retry_after_header(self) -> dict[str, str] | None:
        ends = [
            until
            for group in self._groups
            for u in group
            if u.breaker is not None
            for state, until in [u.breaker.status()]
            if until is not None
        ]
        if not ends:
            return None
        return {"Retry-After": str(max(1, round(min(ends) - time.time())))}
