"""Where answers come from: the upstream API or the embedded model, chosen per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from chatservice.backends.local import LocalBackend
from chatservice.backends.modelpolicy import ModelPolicy
from chatservice.backends.upstream import UpstreamBackend
from chatservice.models import ChatChunk, ChatRequest, ChatResult
from chatservice.settings import Settings
from chatservice.state import SharedState


class Backend(Protocol):
    """What every backend offers; both raise :class:`~chatservice.errors.ServiceError`."""

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer."""

    def stream(self, req: ChatRequest) -> Iterator[ChatChunk]:
        """The answer in chunks, as they are generated; close it to stop the generation."""


class Backends:
    """The app's backends and the BACKEND rule that picks one for each request.

    ``auto``: the embedded model when the request names its id (LOCAL_MODEL_ID), else the
    upstream when API_KEY is set or the request brings its own ``api_key``, else the embedded
    model. ``openai``: always the upstream (keyless upstreams such as Ollama work too).
    ``local``: always the embedded model, request keys ignored.
    """

    def __init__(self, settings: Settings, state: SharedState) -> None:
        self.mode = settings.backend
        self.policy = ModelPolicy(settings.allowed_models, settings.model_aliases)
        self.upstream = UpstreamBackend(settings, state)
        self.local = LocalBackend(settings)

    def select(self, req: ChatRequest) -> Backend:
        """The backend that answers ``req``, after MODEL_ALIASES replaced its model.

        Raises ``BadRequest`` (``model_not_allowed``) for a model ALLOWED_MODELS excludes.
        """
        req.model = self.policy.resolve(req.model)
        if self.mode == "local" or (self.mode == "auto" and req.model == self.local.model_id):
            return self.local
        if self.mode == "openai" or req.api_key or self.upstream.has_default_key:
            return self.upstream
        return self.local

    def close(self) -> None:
        """Release pooled connections."""
        self.upstream.close()
