"""Where answers come from: the upstream API or the embedded model, chosen per request."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal, Protocol

from chatservice.backends.local import LocalBackend
from chatservice.backends.modelpolicy import ModelPolicy
from chatservice.backends.upstream import UpstreamBackend
from chatservice.models import ChatChunk, ChatRequest, ChatResult
from chatservice.settings import Settings
from chatservice.state import KeyValueStore


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
    the metrics' label) and the ``backend`` itself.

    A router choosing among several upstreams would return one per upstream (same names,
    more routes); nothing tells backends apart by identity.
    """

    name: BackendName
    backend: Backend

    @property
    def embedded(self) -> bool:
        """True when the embedded model answers (some faces shape their request for it)."""
        return self.name == "local"


class Backends:
    """The app's backends and the BACKEND rule that picks one for each request.

    ``auto``: the embedded model when the request names its id (LOCAL_MODEL_ID), else the
    upstream when API_KEY is set or the request brings its own ``api_key``, else the embedded
    model. ``openai``: always the upstream (keyless upstreams such as Ollama work too).
    ``local``: always the embedded model, request keys ignored.
    """

    def __init__(self, settings: Settings, state: KeyValueStore) -> None:
        self.mode = settings.backend
        self.policy = ModelPolicy(settings.allowed_models, settings.model_aliases)
        self.upstream = UpstreamBackend(settings, state)
        self.local = LocalBackend(settings)

    def select(self, model: str, api_key: object | None) -> Route:
        """The route for a request naming ``model`` (already resolved by the model policy)
        with the client's own ``api_key`` (or ``None``), by the BACKEND rule above.

        Pure: reads nothing but its arguments and the settings, changes nothing.
        """
        if self.mode == "auto" and model == self.local.model_id:
            return Route("local", self.local)
        if self.upstream_answers(api_key):
            return Route("upstream", self.upstream)
        return Route("local", self.local)

    def upstream_answers(self, api_key: object | None) -> bool:
        """True when, by the BACKEND rule above, the upstream answers a request with the
        client's own ``api_key`` (or ``None``) that does not name the embedded model's id."""
        if self.mode == "auto":
            return bool(api_key) or self.upstream.has_default_key
        return self.mode == "openai"
