"""Small shared key-value state with expiry, in memory, SQLite or Redis.

Two instances exist per app (:class:`chatservice.service.Service`). The *shared state* lives
where the rate limits live (SHARED_STATE_URL): key-pool marks and chat-room histories. The
*conversation store* lives at STORE_URL: conversations, shared conversations, turn locks and
the auth replay cache.

- ``memory://`` keeps values in the worker process (lost on restart, not shared);
- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` keeps them in one file in
  WAL mode, shared by every worker on the machine and kept across restarts;
- ``redis://...`` shares them between workers and machines; expiry is Redis's own TTL.

Values are strings with an optional time to live in seconds. ``add`` (set if absent) and
``delete_if`` (delete if the value matches) are atomic in every backend, which is what locks
and the replay cache need. Storage failures raise
:class:`~chatservice.errors.ServiceError` ``store_unavailable`` (503), never a traceback.
"""

from __future__ import annotations

import _thread
import contextlib
import heapq
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import redis

from chatservice.errors import ServiceError

PREFIX = "chatservice:"
#: Seconds a Redis command or a SQLite lock wait may take before the request fails with 503.
STORAGE_TIMEOUT = 2.0


def use_wal(db: sqlite3.Connection, timeout: float = STORAGE_TIMEOUT) -> None:
    """Put ``db``'s file in SQLite's WAL mode (kept in the file; a no-op once it is).

    While another connection holds a write lock on a file not yet in WAL mode, SQLite
    answers the switch with "database is locked" at once, without waiting out the busy
    timeout: two processes opening the same new file at the same moment (two workers
    starting on a new volume) failed so about one time in a hundred. So a busy answer is
    retried, every 10 ms, for ``timeout`` seconds.

    :raises sqlite3.OperationalError: still locked after ``timeout`` seconds, or any other
        SQLite error.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


class KeyValueStore(Protocol):
    """String values by key, each with an optional TTL in seconds."""

    clock: Callable[[], float]

    def get(self, key: str) -> str | None:
        """The value, or None when absent or expired."""

    def get_many(self, keys: list[str]) -> list[str | None]:
        """The values of ``keys`` in order (None where absent), in one round trip."""

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` seconds from now it expires (None: never)."""

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; True if it was stored."""

    def delete(self, key: str) -> None:
        """Forget ``key``."""

    def delete_if(self, key: str, value: str) -> bool:
        """Forget ``key`` only if it holds ``value``; True if it did."""

    def incr(self, key: str) -> int:
        """Add one to an integer value (absent counts as 0) and return it; keeps the TTL."""

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        """Give ``key`` a new TTL only if it holds ``value``; True if it did (renews locks)."""

    def ping(self) -> None:
        """Raise ``ServiceError`` (store_unavailable) unless the storage answers."""


class MemoryState:
    """Per-process state; ``clock`` (seconds, default ``time.time``) can be replaced in tests.

    Expired entries are freed as time passes, not only when their key is read again: every
    write first drops what has expired (a heap of expiry times keeps that cheap), and beyond
    ``max_entries`` (MEMORY_MAX_ENTRIES) the entries closest to expiry go first, then the
    oldest entries that never expire.
    """

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 100_000) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self._data: dict[str, tuple[str, float | None]] = {}
        #: (expiry, key) of every value stored with a TTL; stale pairs (the key was
        #: rewritten or deleted since) are skipped when they come up.
        self._expiries: list[tuple[float, str]] = []
        # A native lock even under gevent (whose patched Lock costs Python calls on every
        # operation, several per request): no greenlet ever waits on it, since nothing here
        # yields while holding it (dict and heap operations, and the clock), and it still
        # orders real threads (the embedded model's pool).
        self._lock = _thread.allocate_lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> str | None:
        """See :class:`KeyValueStore`."""
        with self._lock:
            return self._live(key)

    def get_many(self, keys: list[str]) -> list[str | None]:
        """See :class:`KeyValueStore`."""
        with self._lock:
            found = [self._data.get(key) for key in keys]
            if not any(found):  # the common case (a key pool's marks): nothing to check
                return [None] * len(keys)
            return [self._live(key) for key in keys]

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """See :class:`KeyValueStore`."""
        with self._lock:
            self._store(key, value, _expiry(self.clock(), ttl))

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """See :class:`KeyValueStore`."""
        with self._lock:
            if self._live(key) is not None:
                return False
            self._store(key, value, _expiry(self.clock(), ttl))
            return True

    def delete(self, key: str) -> None:
        """See :class:`KeyValueStore`."""
        with self._lock:
            self._data.pop(key, None)

    def delete_if(self, key: str, value: str) -> bool:
        """See :class:`KeyValueStore`."""
        with self._lock:
            if self._live(key) != value:
                return False
            del self._data[key]
            return True

    def incr(self, key: str) -> int:
        """See :class:`KeyValueStore`."""
        with self._lock:
            value = int(self._live(key) or 0) + 1
            expires = self._data[key][1] if key in self._data else None
            self._store(key, str(value), expires)
            return value

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        """See :class:`KeyValueStore`."""
        with self._lock:
            if self._live(key) != value:
                return False
            self._store(key, value, _expiry(self.clock(), ttl))
            return True

    def ping(self) -> None:
        """Memory always answers."""

    def _store(self, key: str, value: str, expires: float | None) -> None:
        self._sweep()
        self._data.pop(key, None)  # re-inserted last: the dict's order is the write order
        self._data[key] = (value, expires)
        if expires is not None:
            heapq.heappush(self._expiries, (expires, key))
        while len(self._data) > self.max_entries:
            self._evict_one()
        if len(self._expiries) > 2 * len(self._data) + 64:  # too many stale pairs: rebuild
            self._expiries = [(exp, k) for k, (_, exp) in self._data.items() if exp is not None]
            heapq.heapify(self._expiries)

    def _sweep(self) -> None:
        now = self.clock()
        while self._expiries and self._expiries[0][0] <= now:
            expires, key = heapq.heappop(self._expiries)
            item = self._data.get(key)
            if item is not None and item[1] == expires:
                del self._data[key]

    def _evict_one(self) -> None:
        while self._expiries:
            expires, key = heapq.heappop(self._expiries)
            item = self._data.get(key)
            if item is not None and item[1] == expires:
                del self._data[key]
                return
        del self._data[next(iter(self._data))]  # only never-expiring entries left

    def _live(self, key: str) -> str | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and self.clock() >= expires:
            del self._data[key]
            return None
        return value


class SqliteState:
    """State in one SQLite file (WAL mode), safe for several worker processes.

    Each operation opens its own short connection, so greenlets never share one; SQLite's
    own file locking makes ``add``/``delete_if``/``incr`` atomic across processes. Expired
    rows are ignored when read and swept now and then.
    """

    _SWEEP_EVERY = 300.0

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._path = path
        self._swept = 0.0
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(path, timeout=STORAGE_TIMEOUT)) as db:
                use_wal(db)
                db.execute(
                    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT"
                    " NULL, expires REAL)"
                )
                db.commit()
        except (OSError, sqlite3.Error) as exc:
            # One line naming the file, for the start-up error; never a traceback.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OSError(f"cannot write {path}: {reason}") from None

    def get(self, key: str) -> str | None:
        """See :class:`KeyValueStore`."""
        with self._connect() as db:
            row = db.execute(
                "SELECT value FROM state WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, self.clock()),
            ).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: list[str]) -> list[str | None]:
        """See :class:`KeyValueStore`."""
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        with self._connect() as db:
            rows = dict(
                db.execute(
                    f"SELECT key, value FROM state WHERE key IN ({marks})"  # noqa: S608 - only "?"
                    " AND (expires IS NULL OR expires > ?)",
                    (*keys, self.clock()),
                ).fetchall()
            )
        return [rows.get(key) for key in keys]

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """See :class:`KeyValueStore`."""
        now = self.clock()
        with self._connect() as db:
            db.execute(
                "INSERT INTO state (key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value, expires = excluded.expires",
                (key, value, _expiry(now, ttl)),
            )
            self._sweep(db, now)

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """See :class:`KeyValueStore`."""
        now = self.clock()
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO state (key, value, expires) VALUES (?, ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value, expires = excluded.expires"
                " WHERE state.expires IS NOT NULL AND state.expires <= ?",
                (key, value, _expiry(now, ttl), now),
            )
            return cursor.rowcount == 1

    def delete(self, key: str) -> None:
        """See :class:`KeyValueStore`."""
        with self._connect() as db:
            db.execute("DELETE FROM state WHERE key = ?", (key,))

    def delete_if(self, key: str, value: str) -> bool:
        """See :class:`KeyValueStore`."""
        with self._connect() as db:
            cursor = db.execute(
                "DELETE FROM state WHERE key = ? AND value = ? AND (expires IS NULL OR"
                " expires > ?)",
                (key, value, self.clock()),
            )
            return cursor.rowcount == 1

    def incr(self, key: str) -> int:
        """See :class:`KeyValueStore`."""
        now = self.clock()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT value, expires FROM state WHERE key = ? AND (expires IS NULL OR"
                " expires > ?)",
                (key, now),
            ).fetchone()
            value = (int(row[0]) if row else 0) + 1
            db.execute(
                "INSERT OR REPLACE INTO state (key, value, expires) VALUES (?, ?, ?)",
                (key, str(value), row[1] if row else None),
            )
            db.execute("COMMIT")
            return value

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        """See :class:`KeyValueStore`."""
        now = self.clock()
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE state SET expires = ? WHERE key = ? AND value = ? AND (expires IS NULL"
                " OR expires > ?)",
                (_expiry(now, ttl), key, value, now),
            )
            return cursor.rowcount == 1

    def ping(self) -> None:
        """Raise ``store_unavailable`` unless the file can be *written*: reads go on in WAL
        mode while a stuck writer, a read-only file or a full disk refuse every write.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, writes nothing
            db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self._path, timeout=STORAGE_TIMEOUT, isolation_level=None)
        except sqlite3.Error:
            raise ServiceError("store_unavailable") from None
        try:
            yield db
        except sqlite3.Error:
            raise ServiceError("store_unavailable") from None
        finally:
            db.close()

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._swept >= self._SWEEP_EVERY:
            self._swept = now
            db.execute("DELETE FROM state WHERE expires IS NOT NULL AND expires <= ?", (now,))


class RedisState:
    """State in Redis under the ``chatservice:`` prefix; TTLs are Redis's own (``PX``)."""

    _DELETE_IF = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
        "else return 0 end"
    )
    _EXPIRE_IF = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )

    def __init__(self, url: str) -> None:
        self.clock = time.time
        self._redis = redis_client(url)
        self._delete_if = self._redis.register_script(self._DELETE_IF)
        self._expire_if = self._redis.register_script(self._EXPIRE_IF)

    def get(self, key: str) -> str | None:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            return self._redis.get(PREFIX + key)

    def get_many(self, keys: list[str]) -> list[str | None]:
        """See :class:`KeyValueStore` (one MGET)."""
        if not keys:
            return []
        with redis_errors():
            return self._redis.mget([PREFIX + key for key in keys])

    def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            self._redis.set(PREFIX + key, value, px=_milliseconds(ttl))

    def add(self, key: str, value: str, ttl: float | None = None) -> bool:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            return bool(self._redis.set(PREFIX + key, value, px=_milliseconds(ttl), nx=True))

    def delete(self, key: str) -> None:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            self._redis.delete(PREFIX + key)

    def delete_if(self, key: str, value: str) -> bool:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            return bool(self._delete_if(keys=[PREFIX + key], args=[value]))

    def incr(self, key: str) -> int:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            return int(self._redis.incr(PREFIX + key))

    def expire_if(self, key: str, value: str, ttl: float) -> bool:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            return bool(self._expire_if(keys=[PREFIX + key], args=[value, _milliseconds(ttl)]))

    def ping(self) -> None:
        """See :class:`KeyValueStore`."""
        with redis_errors():
            self._redis.ping()


def _expiry(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


def _milliseconds(ttl: float | None) -> int | None:
    return None if ttl is None else max(1, int(ttl * 1000))


def redis_client(url: str) -> redis.Redis:
    """A client for a ``redis://``, ``rediss://`` or ``redis+unix://`` URL (the last is
    flask-limiter's spelling of redis-py's ``unix://``), answering strings, with
    STORAGE_TIMEOUT seconds to connect and per command. Connects on first use."""
    return redis.Redis.from_url(
        url.replace("redis+unix://", "unix://", 1),
        socket_timeout=STORAGE_TIMEOUT,
        socket_connect_timeout=STORAGE_TIMEOUT,
        decode_responses=True,
    )


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Redis failures as 503 ``store_unavailable`` (the shared state's and the key store's)."""
    try:
        yield
    except redis.RedisError:
        raise ServiceError("store_unavailable") from None


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite://`` URL: three slashes a relative path, four an absolute one."""
    path = url.removeprefix("sqlite://")
    if path in ("", "/", "/:memory:"):
        raise ValueError("expected sqlite:///path/to/file.db")
    return os.path.expanduser(path[1:])


def open_store(url: str, max_entries: int = 100_000) -> KeyValueStore:
    """The state for a storage URL: ``memory://`` (at most ``max_entries`` values),
    ``sqlite:///...`` or ``redis://...``.
    """
    if url.startswith("memory://"):
        return MemoryState(max_entries=max_entries)
    if url.startswith("sqlite://"):
        return SqliteState(sqlite_path(url))
    return RedisState(url)
