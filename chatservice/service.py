"""The app's shared state: what the factory wires once and every request reads.

The request path itself is :mod:`chatservice.pipeline`.
"""

from __future__ import annotations

import dataclasses

from flask import current_app

from chatservice.backends import Backends
from chatservice.budgets import ClientKeys
from chatservice.errors import FaceRegistry
from chatservice.i18n import Catalogs
from chatservice.pipeline import Pipeline
from chatservice.settings import Settings
from chatservice.state import SharedState


@dataclasses.dataclass
class Service:
    """Everything the factory wires for one app: settings, catalogs, backends, the answer
    pipeline, faces, the shared state (at RATELIMIT_STORAGE_URI: key marks, chat rooms) and
    the store (at STORE_URL: conversations, shared conversations, turn locks, the auth replay
    cache) and the client keys kept there (AUTH_MODE=keys, the admin API).
    """

    settings: Settings
    catalogs: Catalogs
    backends: Backends
    pipeline: Pipeline
    faces: FaceRegistry
    state: SharedState
    store: SharedState
    client_keys: ClientKeys | None = None


def current_service() -> Service:
    """The :class:`Service` of the app handling the current request."""
    return current_app.extensions["chatservice"]
