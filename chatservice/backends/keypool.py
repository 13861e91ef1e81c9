"""The upstream key pool: round-robin over usable keys, with cool-downs and disabling.

Keys come from API_KEY (comma-separated) and KEY_FILE (one per line; blank lines, ``#``
comments, spaces and Windows line endings ignored). Each key is *usable*, *cooling down*
until a time, or *disabled*:

- 401, 403 and 429 ``insufficient_quota`` disable a key when AUTO_REMOVE_KEYS is true
  (Alice ChatGPT's ``-a``); with it false they only count as failures;
- a plain 429 cools the key down for its ``Retry-After``, or an exponential backoff
  (1, 2, 4 ... up to 300 s) when the upstream gives none; it comes back by itself;
- transient upstream faults (5xx, timeouts, overload) never touch a key's state.

The marks live in the shared state (memory per worker, or Redis across workers and
machines), under an id derived from a hash of the key, never the key itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
from pathlib import Path
from typing import Any

from chatservice.errors import ServiceError
from chatservice.settings import ConfigError, Secret, Settings
from chatservice.state import KeyValueStore

log = logging.getLogger(__name__)

#: Key-related failures, as reported by the upstream client.
INVALID, FORBIDDEN, QUOTA, RATE_LIMITED = (
    "invalid_key",
    "forbidden",
    "insufficient_quota",
    "rate_limited",
)
DISABLING = (INVALID, FORBIDDEN, QUOTA)
BACKOFF_START, BACKOFF_MAX = 1.0, 300.0


def read_key_file(path: str) -> list[Secret]:
    """Keys from a KEY_FILE; raises :class:`ConfigError` when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"KEY_FILE: cannot read {path}: {exc.strerror}") from None
    keys = []
    for line in text.splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(Secret(key))
    return keys


def key_id(key: Secret) -> str:
    """A stable, non-reversible id for a key (16 hex digits of its SHA-256)."""
    return hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:16]


class KeyPool:
    """The configured upstream keys and their shared state.

    :param keys: the keys, in configuration order (duplicates dropped).
    :param state: where the marks live; its ``clock`` (epoch seconds) times the cool-downs.
    :param auto_remove: disable keys the upstream rejects (AUTO_REMOVE_KEYS).
    """

    def __init__(self, keys: list[Secret], state: KeyValueStore, auto_remove: bool) -> None:
        unique = {key_id(key): key for key in keys}
        self._keys = list(unique.values())
        # Hashed once here: calls look keys up by id on every request.
        self._id = {key: ident for ident, key in unique.items()}
        self._state = state
        self._auto_remove = auto_remove
        self._turn = itertools.count()
        self._striking: set[Secret] = set()  # keys with strikes when the state was last read

    def _clock(self) -> float:
        return self._state.clock()

    @classmethod
    def from_settings(cls, settings: Settings, state: KeyValueStore) -> KeyPool:
        """The pool for API_KEY plus KEY_FILE."""
        keys = list(settings.api_keys)
        if settings.key_file:
            keys.extend(read_key_file(settings.key_file))
        return cls(keys, state, settings.auto_remove_keys)

    def __len__(self) -> int:
        return len(self._keys)

    def usable(self) -> list[Secret]:
        """Usable keys, starting at the next one in round-robin order."""
        if not self._keys:
            return []
        start = next(self._turn) % len(self._keys)
        ordered = self._keys[start:] + self._keys[:start]
        statuses = self._statuses(ordered)
        return [key for key, (state, _) in zip(ordered, statuses, strict=True) if state == "usable"]

    def retry_after(self) -> int | None:
        """Whole seconds until the first cooling key is usable again; None if none cools."""
        now = self._clock()
        waits = [
            until - now
            for state, until in self._statuses(self._keys)
            if state == "cooling" and until is not None
        ]
        return max(1, math.ceil(min(waits))) if waits else None

    def succeeded(self, key: Secret) -> None:
        """A call on ``key`` went through: its backoff starts over."""
        # Only keys the last read of the state saw with strikes are reset, so a call on a
        # healthy key costs no round trip here (at worst a reset waits for the next call).
        if key not in self._striking:
            return
        self._striking.discard(key)
        with contextlib.suppress(ServiceError):  # best effort, see _statuses
            self._state.delete(f"key:{self._id[key]}:strikes")

    def failed(self, key: Secret, reason: str, retry_after: float | None = None) -> None:
        """The upstream refused ``key`` for ``reason`` (one of the module's constants).

        Marks are best effort: with their storage down the refusal is only logged.
        """
        try:
            self._mark(key, reason, retry_after)
        except ServiceError:
            log.warning("key pool state unreachable; %s not marked", key.masked())

    def _mark(self, key: Secret, reason: str, retry_after: float | None) -> None:
        ident = self._id[key]
        self._state.incr(f"key:{ident}:failures")
        self._state.set(f"key:{ident}:last_error", reason)
        if reason in DISABLING:
            if self._auto_remove:
                self._state.set(f"key:{ident}:disabled", "1")
                log.warning("upstream key %s disabled (%s)", key.masked(), reason)
            return
        strikes = self._state.incr(f"key:{ident}:strikes")
        seconds = (
            retry_after if retry_after else min(BACKOFF_MAX, BACKOFF_START * 2 ** (strikes - 1))
        )
        self._state.set(f"key:{ident}:cooldown", str(self._clock() + seconds), ttl=seconds)
        log.warning("upstream key %s cooling down for %.0f s", key.masked(), seconds)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every key, masked, with ``state`` (usable/cooling/disabled), ``cooldown_until``
        (epoch seconds or None), ``failures`` and ``last_error``.
        """
        rows = []
        for key, (state, until) in zip(self._keys, self._statuses(self._keys), strict=True):
            ident = self._id[key]
            rows.append(
                {
                    "key": key.masked(),
                    "id": ident,
                    "state": state,
                    "cooldown_until": until,
                    "failures": int(self._state.get(f"key:{ident}:failures") or 0),
                    "last_error": self._state.get(f"key:{ident}:last_error"),
                }
            )
        return rows

    def _statuses(self, keys: list[Secret]) -> list[tuple[str, float | None]]:
        """Each key's (state, cooling-until) from one read of the shared state (with Redis
        one MGET for the whole pool, not round trips per key); notes which keys have strikes."""
        names = []
        for key in keys:
            ident = self._id[key]
            names += (f"key:{ident}:disabled", f"key:{ident}:cooldown", f"key:{ident}:strikes")
        try:
            values = self._state.get_many(names)
        except ServiceError:
            # The marks' storage is down: a key we cannot judge is tried, and the upstream
            # itself says whether it works. Losing the pool's memory beats refusing everyone.
            log.warning("key pool state unreachable; treating keys as usable")
            return [("usable", None)] * len(keys)
        now = self._clock()
        statuses: list[tuple[str, float | None]] = []
        marks = zip(keys, values[::3], values[1::3], values[2::3], strict=True)
        for key, disabled, until, strikes in marks:
            if strikes is None:
                self._striking.discard(key)
            else:
                self._striking.add(key)
            if disabled:
                statuses.append(("disabled", None))
            elif until is not None and float(until) > now:
                statuses.append(("cooling", float(until)))
            else:
                statuses.append(("usable", None))
        return statuses
