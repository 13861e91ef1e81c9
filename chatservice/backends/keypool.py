"""The upstream key pool: round-robin over usable keys, with cool-downs and disabling.

Keys come from API_KEY (comma-separated) and KEY_FILE (one per line; blank lines, ``#``
comments, spaces and Windows line endings ignored). Each key is *usable*, *cooling down*
until a time, or *disabled*:

- a *key fault* -- OpenAI's ``invalid_api_key``, ``account_deactivated`` or
  ``insufficient_quota`` code or type -- disables the key when AUTO_REMOVE_KEYS is true (Alice
  ChatGPT's ``-a``); with it false it only counts as a failure;
- a 401 or 403 without such a code is *ambiguous*: a provider's model restriction or
  moderation refuses the request, not the key. The key is suspended (at most one key per
  request, :class:`Failover`) and re-checked in the background through the upstream's
  ``GET /models`` with that key: a 401/403 there disables it, a 200 puts it back, and a probe
  that cannot tell lets the suspension lapse after :data:`SUSPEND_SECONDS`;
- a plain 429 cools the key down for its ``Retry-After``, or an exponential backoff
  (1, 2, 4 ... up to 300 s) when the upstream gives none; it comes back by itself. It is
  ambiguous too (one request can draw it), so it cools at most one key per request;
- transient upstream faults (5xx, timeouts, overload) never touch a key's state.

After an ambiguous refusal the next key is tried once; when that one refuses too, the
request itself is the problem and the client gets the upstream's own status (4xx), not 503.

The marks live in the shared state (memory per worker, or Redis across workers and
machines), under an id derived from a hash of the key, never the key itself, and under the
upstream's name: the same key at two providers (an OpenAI key used directly and through a
second base URL) has two states, and one provider refusing it leaves the other using it.
The single upstream without ``[[upstreams]]`` (``default``) keeps the names it had before
upstreams were named (``key:<id>:...``), so its marks survive an upgrade.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import threading
from collections.abc import Callable, Mapping
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
#: OpenAI's error codes and types that blame the key itself, whatever the request.
KEY_FAULT_CODES = frozenset(
    {"invalid_api_key", "account_deactivated", "insufficient_quota", "billing_not_active"}
)
#: Seconds an ambiguously refused key stays out while its background probe runs; a probe
#: that cannot reach the upstream leaves the key to come back by itself after this.
SUSPEND_SECONDS = 60.0
#: The upstream whose marks keep their names from before upstreams were named.
DEFAULT_UPSTREAM = "default"


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why the upstream refused a call with a pool key.

    :param reason: one of the module's constants (``invalid_key``, ``forbidden``, ...).
    :param definite: True for a key fault (by its error code), False when the refusal may be
        the request's own (a bare 401/403, a plain 429).
    :param retry_after: the upstream's ``Retry-After`` in seconds, if any.
    """

    reason: str
    definite: bool
    retry_after: float | None = None


def classify(status: int, error: Mapping[str, Any], headers: Mapping[str, str]) -> Refusal | None:
    """The :class:`Refusal` an upstream answer means for its key, or None when it is no
    refusal of the key (2xx, 5xx, 400 ...).

    ``error`` is the answer's OpenAI ``error`` object (``{}`` when there is none); only its
    ``code`` and ``type`` are read.
    """
    marks = {str(error.get("code") or ""), str(error.get("type") or "")}
    if status == 429:
        if "insufficient_quota" in marks:
            return Refusal(QUOTA, True)
        retry = str(headers.get("Retry-After", ""))
        return Refusal(RATE_LIMITED, False, float(retry) if retry.isdigit() else None)
    if status not in (401, 403):
        return None
    reason = INVALID if status == 401 else FORBIDDEN
    if "insufficient_quota" in marks:
        return Refusal(QUOTA, True)
    return Refusal(reason, bool(marks & KEY_FAULT_CODES))


class Failover:
    """One request's walk over the pool: key faults move on freely, but only one ambiguous
    refusal is charged to a key; a second one means the request is at fault.
    """

    def __init__(self) -> None:
        self.ambiguous = 0

    def charge(self, refusal: Refusal) -> bool:
        """Whether ``refusal`` is to be marked on its key (and the next key tried)."""
        if refusal.definite:
            return True
        self.ambiguous += 1
        return self.ambiguous == 1


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


#: The marks a key's state is read from, in the order :meth:`KeyPool._statuses` reads them.
_MARKS = ("disabled", "cooldown", "strikes", "suspended")


def key_id(key: Secret) -> str:
    """A stable, non-reversible id for a key (16 hex digits of its SHA-256)."""
    return hashlib.sha256(key.get_secret_value().encode()).hexdigest()[:16]


class KeyPool:
    """The configured upstream keys and their shared state.

    :param keys: the keys, in configuration order (duplicates dropped).
    :param state: where the marks live; its ``clock`` (epoch seconds) times the cool-downs.
    :param auto_remove: disable keys the upstream rejects (AUTO_REMOVE_KEYS).
    :param upstream: the name of the upstream the keys are for: their marks' namespace.
    """

    def __init__(
        self,
        keys: list[Secret],
        state: KeyValueStore,
        auto_remove: bool,
        upstream: str = DEFAULT_UPSTREAM,
    ) -> None:
        unique = {key_id(key): key for key in keys}
        self._keys = list(unique.values())
        # Hashed once here: calls look keys up by id on every request.
        self._id = {key: ident for ident, key in unique.items()}
        # Upstream names are letters, digits, ".", "_" and "-": no ":" to collide with.
        self._prefix = "key:" if upstream == DEFAULT_UPSTREAM else f"key:{upstream}:"
        # And each key's four marks' names, read together on every request.
        self._marks = {
            key: tuple(f"{self._prefix}{ident}:{mark}" for mark in _MARKS)
            for ident, key in unique.items()
        }
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

    def _mark_name(self, ident: str, field: str) -> str:
        return f"{self._prefix}{ident}:{field}"

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
            self._state.delete(self._mark_name(self._id[key], "strikes"))

    def failed(
        self,
        key: Secret,
        refusal: Refusal,
        probe: Callable[[Secret], int | None] | None = None,
    ) -> None:
        """The upstream refused ``key`` (see :func:`classify`).

        ``probe(key)`` answers the HTTP status of the upstream's ``GET /models`` with ``key``
        (None when unreachable); an ambiguous 401/403 suspends the key and runs it in a
        background thread (a greenlet under gevent). Marks are best effort: with their
        storage down the refusal is only logged.
        """
        try:
            self._mark(key, refusal, probe)
        except ServiceError:
            log.warning("key pool state unreachable; %s not marked", key.masked())

    def _mark(
        self, key: Secret, refusal: Refusal, probe: Callable[[Secret], int | None] | None
    ) -> None:
        ident, reason = self._id[key], refusal.reason
        self._state.incr(self._mark_name(ident, "failures"))
        self._state.set(self._mark_name(ident, "last_error"), reason)
        if reason in DISABLING:
            if not self._auto_remove:
                return
            if refusal.definite or probe is None:
                self._state.set(self._mark_name(ident, "disabled"), "1")
                log.warning("upstream key %s disabled (%s)", key.masked(), reason)
                return
            self._state.set(self._mark_name(ident, "suspended"), "1", ttl=SUSPEND_SECONDS)
            log.warning("upstream key %s suspended (%s); re-checking it", key.masked(), reason)
            threading.Thread(target=self._recheck, args=(key, probe), daemon=True).start()
            return
        strikes = self._state.incr(self._mark_name(ident, "strikes"))
        retry_after = refusal.retry_after
        seconds = (
            retry_after if retry_after else min(BACKOFF_MAX, BACKOFF_START * 2 ** (strikes - 1))
        )
        self._state.set(
            self._mark_name(ident, "cooldown"), str(self._clock() + seconds), ttl=seconds
        )
        log.warning("upstream key %s cooling down for %.0f s", key.masked(), seconds)

    def _recheck(self, key: Secret, probe: Callable[[Secret], int | None]) -> None:
        """Keep a suspended key out only if the upstream's ``/models`` refuses it too."""
        ident = self._id[key]
        try:
            status = probe(key)
            if status in (401, 403):
                self._state.set(self._mark_name(ident, "disabled"), "1")
                self._state.delete(self._mark_name(ident, "suspended"))
                log.warning("upstream key %s disabled (/models probe: %s)", key.masked(), status)
            elif status == 200:
                self._state.delete(self._mark_name(ident, "suspended"))
                log.info("upstream key %s is fine (/models probe); back in use", key.masked())
        except Exception:  # a background thread: log, never die silently
            log.exception("re-checking upstream key %s failed", key.masked())

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
                    "failures": int(self._state.get(self._mark_name(ident, "failures")) or 0),
                    "last_error": self._state.get(self._mark_name(ident, "last_error")),
                }
            )
        return rows

    def _statuses(self, keys: list[Secret]) -> list[tuple[str, float | None]]:
        """Each key's (state, cooling-until) from one read of the shared state (with Redis
        one MGET for the whole pool, not round trips per key); notes which keys have strikes."""
        names = [name for key in keys for name in self._marks[key]]
        try:
            values = self._state.get_many(names)
        except ServiceError:
            # The marks' storage is down: a key we cannot judge is tried, and the upstream
            # itself says whether it works. Losing the pool's memory beats refusing everyone.
            log.warning("key pool state unreachable; treating keys as usable")
            return [("usable", None)] * len(keys)
        now = self._clock()
        statuses: list[tuple[str, float | None]] = []
        marks = zip(keys, values[::4], values[1::4], values[2::4], values[3::4], strict=True)
        for key, disabled, until, strikes, suspended in marks:
            if strikes is None:
                self._striking.discard(key)
            else:
                self._striking.add(key)
            if disabled or suspended:
                statuses.append(("disabled", None))
            elif until is not None and float(until) > now:
                statuses.append(("cooling", float(until)))
            else:
                statuses.append(("usable", None))
        return statuses
