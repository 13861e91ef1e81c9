"""Small shared key-value state: key-pool marks, chat-room histories.

It lives in the same storage as the rate limits (RATELIMIT_STORAGE_URI): ``memory://`` keeps
it in the worker process, ``redis://`` shares it between workers and machines. Values are
strings with an optional time to live in seconds. Redis failures raise
:class:`~chatservice.errors.ServiceError` ``store_unavailable`` (503), never a traceback.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import redis

from chatservice.errors import ServiceError

PREFIX = "chatservice:"
#: Seconds a Redis command may take before the request fails with a 503.
REDIS_TIMEOUT = 2.0


class SharedState(Protocol):
    """String values by key, each with an optional TTL in seconds."""

    clock: Callable[[], float]

    def get(self, key: str) -> str | None:
        """The value, or None when absent or expired."""

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` seconds from now it expires (None: never)."""

    def delete(self, key: str) -> None:
        """Forget ``key``."""

    def incr(self, key: str) -> int:
        """Add one to an integer value (absent counts as 0) and return it; keeps the TTL."""


class MemoryState:
    """Per-process state; ``clock`` (seconds, default ``time.time``) can be replaced in tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._data: dict[str, tuple[str, float | None]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        """See :class:`SharedState`."""
        with self._lock:
            return self._live(key)

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """See :class:`SharedState`."""
        with self._lock:
            self._data[key] = (value, None if ttl is None else self.clock() + ttl)

    def delete(self, key: str) -> None:
        """See :class:`SharedState`."""
        with self._lock:
            self._data.pop(key, None)

    def incr(self, key: str) -> int:
        """See :class:`SharedState`."""
        with self._lock:
            value = int(self._live(key) or 0) + 1
            expires = self._data[key][1] if key in self._data else None
            self._data[key] = (str(value), expires)
            return value

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and self.clock() >= expires:
            del self._data[key]
            return None
        return value


class RedisState:
    """State in Redis under the ``chatservice:`` prefix; TTLs are Redis's own (``PX``)."""

    def __init__(self, url: str) -> None:
        self.clock = time.time
        self._redis = redis.Redis.from_url(
            url.replace("redis+unix://", "unix://", 1),
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
            decode_responses=True,
        )

    def get(self, key: str) -> str | None:
        """See :class:`SharedState`."""
        with _redis_errors():
            return self._redis.get(PREFIX + key)

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """See :class:`SharedState`."""
        with _redis_errors():
            self._redis.set(
                PREFIX + key, value, px=None if ttl is None else max(1, int(ttl * 1000))
            )

    def delete(self, key: str) -> None:
        """See :class:`SharedState`."""
        with _redis_errors():
            self._redis.delete(PREFIX + key)

    def incr(self, key: str) -> int:
        """See :class:`SharedState`."""
        with _redis_errors():
            return int(self._redis.incr(PREFIX + key))


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError:
        raise ServiceError("store_unavailable", status=503) from None


def create_state(storage_uri: str) -> SharedState:
    """The state for RATELIMIT_STORAGE_URI: memory for ``memory://``, else Redis."""
    if storage_uri.startswith("memory://"):
        return MemoryState()
    return RedisState(storage_uri)
