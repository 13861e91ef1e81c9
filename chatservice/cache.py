"""The exact-match response cache (CACHE_URL, CACHE_TTL): the pipeline's lookup step and the
observer that fills it.

A request is cacheable when it is deterministic: ``temperature`` 0, or a ``seed``. Its key is
a SHA-256 of everything that shapes the answer: the resolved model, the messages or prompt,
``max_tokens``, every other request field (``stream_options`` aside), whether it streams,
the backend, and the upstream key's owner (a hash of the client's own ``api_key``, or the
service's pool), so a client's per-request key never reads another key's answers. Whole
answers and streams are kept apart: a stream is replayed as the same chunks.

- ``Cache-Control: no-cache`` skips the lookup (the fresh answer is still stored), and
  ``no-store`` keeps the answer out; responses of cacheable requests say ``X-Cache: HIT`` or
  ``MISS``.
- Only answers that finished are stored: errors, streams that broke off or whose client went
  away never are.
- Single flight: the first miss takes a lock in the cache's storage (atomic set-if-absent,
  so across workers and instances with ``redis://``); identical requests meanwhile wait for
  its answer, up to UPSTREAM_READ_TIMEOUT, then ask the backend themselves.
- A cache storage outage turns into misses (logged), never into a failed request.

``memory://`` keeps entries in the worker, at most :data:`MEMORY_BYTES` of them (cachetools'
``TTLCache``: expired entries go first, then the least recently used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

import cachetools
import gevent
from flask import Flask, Response, has_request_context, request

from chatservice.errors import ServiceError
from chatservice.models import ChatChunk, ChatResult
from chatservice.state import KeyValueStore, MemoryState, open_store

if TYPE_CHECKING:
    from chatservice.pipeline import Call, Outcome
    from chatservice.settings import Settings

log = logging.getLogger(__name__)

#: The response header, and where the lookup step leaves its verdict for it.
HEADER = "X-Cache"
ENVIRON_KEY = "chatservice.cache"
#: Seconds between two looks of a request waiting for an identical one's answer.
POLL_SECONDS = 0.05
#: Most characters of stored answers a ``memory://`` cache keeps in one worker (8 MiB).
MEMORY_BYTES = 8 * 1024 * 1024
#: Request fields that change how an answer is delivered, not what it says.
_DELIVERY = frozenset({"stream_options"})

Status = Literal["HIT", "MISS"]


@dataclasses.dataclass(frozen=True)
class Lookup:
    """The lookup step's verdict for one call.

    :ivar status: ``HIT`` (``entry`` holds the stored answer) or ``MISS``.
    :ivar key: the cache key (a hex digest, no secret).
    :ivar store: whether the answer of a miss may be stored (no ``no-store``).
    :ivar lock: the single-flight lock's token when this call holds it, else ``None``.
    :ivar entry: the stored answer: ``{"result": {...}}`` or ``{"chunks": [{...}, ...]}``.
    """

    status: Status
    key: str
    store: bool = True
    lock: str | None = None
    entry: dict[str, Any] | None = None

    def result(self) -> ChatResult:
        """The stored whole answer of a hit."""
        assert self.entry is not None  # noqa: S101 - only called on a hit
        return ChatResult(**self.entry["result"])

    def chunks(self) -> list[ChatChunk]:
        """The stored chunks of a streamed hit (relayed ones with their event bytes)."""
        assert self.entry is not None  # noqa: S101 - only called on a hit
        chunks = []
        for stored in self.entry["chunks"]:
            event = stored.pop("event", None)
            chunks.append(ChatChunk(**stored, event=None if event is None else event.encode()))
        return chunks


class ResponseCache:
    """The cache at CACHE_URL.

    :param state: where single-flight locks live, and entries unless ``entries`` is given.
    :param ttl: seconds an entry is kept (CACHE_TTL).
    :param wait: most seconds a request waits for an identical one's answer, and the
        lock's lifetime (UPSTREAM_READ_TIMEOUT).
    :param entries: where entries live (``get``, ``set``), if not in ``state``.
    """

    def __init__(
        self, state: KeyValueStore, ttl: float, wait: float, entries: Any | None = None
    ) -> None:
        self.state = state
        self.entries = entries if entries is not None else state
        self.ttl = ttl
        self.wait = wait

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseCache | None:
        """The cache CACHE_URL names, or ``None`` when it is off."""
        if not settings.cache_url:
            return None
        ttl, wait = settings.cache_ttl, settings.upstream_read_timeout
        if settings.cache_url.startswith("memory://"):
            return cls(MemoryState(), ttl, wait, MemoryEntries(MEMORY_BYTES, ttl))
        return cls(open_store(settings.cache_url), ttl, wait)

    def lookup(self, call: Call) -> Lookup | None:
        """The verdict for ``call``: ``None`` when it is not cacheable, a hit, or a miss
        (waiting first while an identical call that holds the lock is under way).
        """
        key = cache_key(call)
        if key is None:
            return None
        directives = _cache_control()
        store = "no-store" not in directives
        if "no-cache" in directives:
            return _noted(Lookup("MISS", key, store))
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.wait
        while True:
            entry = self._get(key)
            if entry is not None:
                return _noted(Lookup("HIT", key, entry=entry))
            if self._claim(key, token):
                # An identical call may have stored its answer and released the lock between
                # the read above and this claim (it stores before it releases): read again,
                # or this call would ask the backend a second time.
                entry = self._get(key)
                if entry is not None:
                    self.release(key, token)
                    return _noted(Lookup("HIT", key, entry=entry))
                return _noted(Lookup("MISS", key, store, lock=token))
            if time.monotonic() >= deadline:
                return _noted(Lookup("MISS", key, store))
            # The lock's holder is answering: its answer is worth waiting for.
            gevent.sleep(POLL_SECONDS)

    def begin(self, call: Call) -> _Fill | None:
        """The observer side: watch a miss that may be stored or holds the lock."""
        lookup = call.cache
        if lookup is None or lookup.status != "MISS" or not (lookup.store or lookup.lock):
            return None
        return _Fill(self, lookup, call.streamed)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store ``entry`` under ``key`` for CACHE_TTL seconds."""
        try:
            self.entries.set(_entry_key(key), json.dumps(entry, ensure_ascii=False), ttl=self.ttl)
        except ServiceError:
            log.warning("cache storage unreachable; answer not stored")

    def release(self, key: str, token: str) -> None:
        """Give up the single-flight lock of ``key`` held with ``token``."""
        try:
            self.state.delete_if(_lock_key(key), token)
        except ServiceError:
            log.warning("cache storage unreachable; lock left to expire")

    def _get(self, key: str) -> dict[str, Any] | None:
        try:
            raw = self.entries.get(_entry_key(key))
        except ServiceError:
            log.warning("cache storage unreachable; treated as a miss")
            return None
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def _claim(self, key: str, token: str) -> bool:
        try:
            return self.state.add(_lock_key(key), token, ttl=self.wait)
        except ServiceError:
            return True  # no storage, no one to wait for


class MemoryEntries:
    """A worker's entries, bounded: at most ``size`` characters, each kept ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self._cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(size, ttl, getsizeof=len)

    def get(self, key: str) -> str | None:
        """The entry, or ``None``."""
        return self._cache.get(key)

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Keep ``value`` (for the cache's own TTL); one larger than the whole cache is not."""
        if len(value) <= self._cache.maxsize:
            self._cache[key] = value


class _Fill:
    """Collects a miss's answer; stores it once the call ended ``done``; releases the lock."""

    def __init__(self, cache: ResponseCache, lookup: Lookup, streamed: bool) -> None:
        self.cache = cache
        self.lookup = lookup
        self.streamed = streamed
        self.entry: dict[str, Any] | None = None
        self.chunks: list[dict[str, Any]] = []
        self.finished = False

    def result(self, result: ChatResult) -> None:
        self.entry = {"result": dataclasses.asdict(result)}

    def chunk(self, chunk: ChatChunk) -> None:
        self.finished = self.finished or chunk.finish_reason is not None
        stored: dict[str, Any] = {
            "text": chunk.text,
            "model": chunk.model,
            "finish_reason": chunk.finish_reason,
            "usage": chunk.usage,
            "raw": chunk.raw,
        }
        if chunk.event is not None:  # relayed as the upstream's bytes: replayed the same
            stored["event"] = chunk.event.decode("utf-8", errors="replace")
        self.chunks.append(stored)

    def error(self, err: Exception) -> None:
        self.entry, self.chunks = None, []

    def end(self, outcome: Outcome) -> None:
        try:
            if outcome == "done" and self.lookup.store:
                if self.streamed and self.finished:
                    self.entry = {"chunks": self.chunks}
                if self.entry is not None:
                    self.cache.put(self.lookup.key, self.entry)
        finally:
            if self.lookup.lock is not None:
                self.cache.release(self.lookup.key, self.lookup.lock)


def cacheable(params: dict[str, Any]) -> bool:
    """Whether request fields ``params`` ask for a deterministic answer: ``temperature`` 0 or
    a ``seed``.
    """
    temperature = params.get("temperature")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    return (zero and temperature == 0) or params.get("seed") is not None


def cache_key(call: Call) -> str | None:
    """The cache key of ``call`` (a SHA-256 hex digest), or ``None`` when not cacheable."""
    req = call.request
    if req.kind not in ("chat", "completion") or not cacheable(req.params):
        return None
    owner = "service"
    if req.api_key is not None:
        owner = hashlib.sha256(req.api_key.get_secret_value().encode()).hexdigest()
    material = {
        "kind": req.kind,
        "model": req.model,
        "messages": req.messages,
        "prompt": req.prompt,
        "max_tokens": req.max_tokens,
        "params": {k: v for k, v in req.params.items() if k not in _DELIVERY},
        "streamed": call.streamed,
        "route": call.route.name,
        "owner": owner,
    }
    raw = json.dumps(material, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def init_app(app: Flask, cache: ResponseCache | None) -> None:
    """Add ``X-Cache: HIT``/``MISS`` to the responses of cacheable requests when ``cache``
    (CACHE_URL) is on; without it no request has a status, and no hook is installed."""
    if cache is None:
        return

    @app.after_request
    def add_header(response: Response) -> Response:
        status = request.environ.get(ENVIRON_KEY)
        if status:
            response.headers[HEADER] = status
        return response


def _cache_control() -> set[str]:
    if not has_request_context():
        return set()
    header = request.headers.get("Cache-Control", "")
    return {part.strip().lower() for part in header.split(",") if part.strip()}


def _noted(lookup: Lookup) -> Lookup:
    if has_request_context():
        request.environ[ENVIRON_KEY] = lookup.status
    return lookup


def _entry_key(key: str) -> str:
    return f"cache:{key}"


def _lock_key(key: str) -> str:
    return f"cache-lock:{key}"
