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
from chatservice.state import KeyValueStore


@dataclasses.dataclass
class Service:
    """Everything the factory wires for one app: settings, catalogs, backends, the answer
    pipeline, faces, and two key-value stores:

    ``shared_state`` (SHARED_STATE_URL, where flask-limiter keeps its counters): short-lived
    state every worker must see: the key pool's marks and the chat rooms' histories;
    ``conversation_store`` (STORE_URL, durable by default): Alice ChatGPT's conversations,
    their shared copies and turn locks, and the auth replay cache; and
    ``client_keys`` (AUTH_MODE=keys, the admin API), kept at STORE_URL in a store of their own.
    """

    settings: Settings
    catalogs: Catalogs
    backends: Backends
    pipeline: Pipeline
    faces: FaceRegistry
    shared_state: KeyValueStore
    conversation_store: KeyValueStore
    client_keys: ClientKeys | None = None


def current_service() -> Service:
    """The :class:`Service` of the app handling the current request."""
    return current_app.extensions["chatservice"]
