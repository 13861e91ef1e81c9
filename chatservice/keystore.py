"""Where client keys, their counters and their usage live: the store at STORE_URL.

Three back ends with one interface (:class:`KeyStore`): a SQLite file (the default; several
workers of one machine), Redis (several instances) and ``memory://`` (one process; tests). The
store holds each key's SHA-256, masked form and settings (:class:`~chatservice.clientkeys.
KeyRecord`), never the key itself.

Counters are what makes limits and budgets exact under concurrency and across instances:
:meth:`KeyStore.reserve` checks several counters against their limits and adds to all of
them in one atomic step (a Lua script in Redis, an ``IMMEDIATE`` transaction in SQLite), or
adds to none and says which one refused; :meth:`KeyStore.adjust` later corrects them by the
difference between the reservation and what was really used. A counter may carry a time to
live (a minute window, a day); ``adjust`` leaves a counter that has expired alone.

Usage rows add up, per UTC day, key and model: ``requests``, ``prompt_tokens``,
``completion_tokens``, ``errors`` and ``cost_nanos`` (billionths of the currency of
``[prices]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from chatservice.clientkeys import KeyRecord
from chatservice.errors import ServiceError
from chatservice.state import (
    PREFIX,
    STORAGE_TIMEOUT,
    redis_client,
    redis_errors,
    sqlite_path,
    use_wal,
)

#: The fields of a usage row that add up.
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors", "cost_nanos")


@dataclasses.dataclass(frozen=True)
class Counter:
    """One counter a reservation checks: ``name`` may not pass ``limit`` after adding
    ``amount``; a new counter lives ``ttl`` seconds (``None``: for ever).
    """

    name: str
    limit: int
    amount: int
    ttl: float | None = None


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """One day's usage of one model through one key (``day`` is ``YYYY-MM-DD``, UTC)."""

    day: str
    key_id: str
    key_name: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    cost_nanos: int = 0


class KeyStore(Protocol):
    """The operations on client keys; each raises ``ServiceError`` ``store_unavailable``
    (503) when the store fails, and :meth:`create`/:meth:`update` raise ``client_key_name_taken``
    (409) for a name another key has.
    """

    def create(self, record: KeyRecord, key_hash: str) -> None:
        """Store a new key."""

    def get(self, key_id: str) -> KeyRecord | None:
        """The key with this id."""

    def by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key whose SHA-256 is ``key_hash``."""

    def by_name(self, name: str) -> KeyRecord | None:
        """The key named ``name``."""

    def all(self) -> list[KeyRecord]:
        """Every key, oldest first."""

    def replace(self, record: KeyRecord) -> None:
        """Store ``record`` over the key with its id (its hash stays)."""

    def delete(self, key_id: str) -> bool:
        """Remove a key and its counters' index; False when there was none."""

    def reserve(self, counters: Sequence[Counter]) -> int | None:
        """Add every counter's amount atomically, or none: the index of the first counter
        that would pass its limit, else ``None``.
        """

    def adjust(self, names: Sequence[str], delta: int) -> None:
        """Add ``delta`` (may be negative) to each named counter that still exists."""

    def read(self, names: Sequence[str]) -> list[int]:
        """The counters' current values (0 when absent)."""

    def add_usage(self, row: UsageRow) -> None:
        """Add ``row``'s numbers to the stored row of its day, key and model."""

    def usage(self, first_day: str, last_day: str) -> list[UsageRow]:
        """Rows from ``first_day`` to ``last_day`` (inclusive, ``YYYY-MM-DD``)."""


def _taken() -> ServiceError:
    return ServiceError("client_key_name_taken")


class SqlKeyStore:
    """Keys in SQLite: a file (one short connection per operation, as
    :class:`chatservice.state.SqliteState` does) or, for ``memory://``, one private in-memory
    database behind a lock.
    """

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS client_keys (id TEXT PRIMARY KEY, hash TEXT NOT NULL"
        " UNIQUE, name TEXT NOT NULL UNIQUE, created REAL NOT NULL, data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS client_key_counters (name TEXT PRIMARY KEY,"
        " value INTEGER NOT NULL, expires REAL)",
        "CREATE TABLE IF NOT EXISTS client_key_usage (day TEXT NOT NULL, key_id TEXT NOT NULL,"
        " key_name TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,"
        " prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL"
        " DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, cost_nanos INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (day, key_id, model))",
    )

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._memory: sqlite3.Connection | None = None
        if path is None:
            self._memory = sqlite3.connect(
                ":memory:", isolation_level=None, check_same_thread=False
            )
        elif path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            if path is not None:
                use_wal(db)
            for statement in self._SCHEMA:
                db.execute(statement)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self._memory is not None:
                with self._lock:
                    yield self._memory
                return
            try:
                db = sqlite3.connect(
                    self._path or "", timeout=STORAGE_TIMEOUT, isolation_level=None
                )
            except sqlite3.Error:
                raise ServiceError("store_unavailable") from None
            try:
                yield db
            finally:
                db.close()
        except sqlite3.IntegrityError:
            raise _taken() from None
        except sqlite3.Error:
            raise ServiceError("store_unavailable") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def create(self, record: KeyRecord, key_hash: str) -> None:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO client_keys (id, hash, name, created, data) VALUES (?, ?, ?, ?, ?)",
                (record.id, key_hash, record.name, record.created_at, _dump(record)),
            )

    def _one(self, where: str, value: str) -> KeyRecord | None:
        with self._connect() as db:
            row = db.execute(f"SELECT data FROM client_keys WHERE {where} = ?", (value,)).fetchone()  # noqa: S608 - a fixed column name
        return None if row is None else KeyRecord.from_json(json.loads(row[0]))

    def get(self, key_id: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        return self._one("id", key_id)

    def by_hash(self, key_hash: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        return self._one("hash", key_hash)

    def by_name(self, name: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        return self._one("name", name)

    def all(self) -> list[KeyRecord]:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            rows = db.execute("SELECT data FROM client_keys ORDER BY created, id").fetchall()
        return [KeyRecord.from_json(json.loads(row[0])) for row in rows]

    def replace(self, record: KeyRecord) -> None:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            db.execute(
                "UPDATE client_keys SET name = ?, data = ? WHERE id = ?",
                (record.name, _dump(record), record.id),
            )

    def delete(self, key_id: str) -> bool:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            return db.execute("DELETE FROM client_keys WHERE id = ?", (key_id,)).rowcount == 1

    def reserve(self, counters: Sequence[Counter]) -> int | None:
        """See :class:`KeyStore`."""
        now = time.time()
        with self._transaction() as db:
            values = self._values(db, [c.name for c in counters], now)
            for index, (counter, value) in enumerate(zip(counters, values, strict=True)):
                if value + counter.amount > counter.limit:
                    return index
            for counter, value in zip(counters, values, strict=True):
                db.execute(
                    "INSERT INTO client_key_counters (name, value, expires) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = ?, expires = CASE WHEN"
                    " client_key_counters.expires IS NOT NULL AND client_key_counters.expires"
                    " <= ? THEN excluded.expires ELSE client_key_counters.expires END",
                    (
                        counter.name,
                        value + counter.amount,
                        None if counter.ttl is None else now + counter.ttl,
                        value + counter.amount,
                        now,
                    ),
                )
            # Expired windows are dead rows: swept here, where the writer holds the lock.
            db.execute(
                "DELETE FROM client_key_counters WHERE expires IS NOT NULL AND expires <= ?",
                (now - 60,),
            )
        return None

    def adjust(self, names: Sequence[str], delta: int) -> None:
        """See :class:`KeyStore`."""
        now = time.time()
        with self._transaction() as db:
            for name in names:
                db.execute(
                    "UPDATE client_key_counters SET value = max(0, value + ?) WHERE name = ?"
                    " AND (expires IS NULL OR expires > ?)",
                    (delta, name, now),
                )

    def read(self, names: Sequence[str]) -> list[int]:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            return self._values(db, names, time.time())

    @staticmethod
    def _values(db: sqlite3.Connection, names: Sequence[str], now: float) -> list[int]:
        values = []
        for name in names:
            row = db.execute(
                "SELECT value FROM client_key_counters WHERE name = ? AND (expires IS NULL OR"
                " expires > ?)",
                (name, now),
            ).fetchone()
            values.append(0 if row is None else int(row[0]))
        return values

    def add_usage(self, row: UsageRow) -> None:
        """See :class:`KeyStore`."""
        numbers = [getattr(row, field) for field in USAGE_FIELDS]
        with self._connect() as db:
            db.execute(
                "INSERT INTO client_key_usage (day, key_id, key_name, model, requests,"
                " prompt_tokens, completion_tokens, errors, cost_nanos) VALUES (?, ?, ?, ?, ?,"
                " ?, ?, ?, ?) ON CONFLICT(day, key_id, model) DO UPDATE SET key_name ="
                " excluded.key_name, requests = requests + excluded.requests, prompt_tokens ="
                " prompt_tokens + excluded.prompt_tokens, completion_tokens = completion_tokens"
                " + excluded.completion_tokens, errors = errors + excluded.errors, cost_nanos ="
                " cost_nanos + excluded.cost_nanos",
                (row.day, row.key_id, row.key_name, row.model, *numbers),
            )

    def usage(self, first_day: str, last_day: str) -> list[UsageRow]:
        """See :class:`KeyStore`."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT day, key_id, key_name, model, requests, prompt_tokens,"
                " completion_tokens, errors, cost_nanos FROM client_key_usage WHERE day >= ?"
                " AND day <= ? ORDER BY day, key_name, model",
                (first_day, last_day),
            ).fetchall()
        return [UsageRow(*row) for row in rows]


class RedisKeyStore:
    """Keys in Redis under ``chatservice:ck:``, shared by every instance using that server.

    ``ck:key:<id>`` holds the record as JSON, ``ck:hash:<sha256>`` and ``ck:name:<name>`` the
    id, ``ck:hashof:<id>`` the hash, ``ck:ids`` the ids by creation time; counters are
    ``ck:n:<name>`` integers; usage rows are hashes ``ck:use:<day>:<id>:<model>`` listed in
    the sorted set ``ck:use``.
    """

    _RESERVE = """
    for i = 1, #KEYS do
      local current = tonumber(redis.call('get', KEYS[i]) or '0')
      if current + tonumber(ARGV[3 * i - 1]) > tonumber(ARGV[3 * i - 2]) then return i end
    end
    for i = 1, #KEYS do
      redis.call('incrby', KEYS[i], ARGV[3 * i - 1])
      local ttl = tonumber(ARGV[3 * i])
      if ttl > 0 and redis.call('pttl', KEYS[i]) < 0 then redis.call('pexpire', KEYS[i], ttl) end
    end
    return 0
    """
    _ADJUST = """
    for i = 1, #KEYS do
      if redis.call('exists', KEYS[i]) == 1 then
        if tonumber(redis.call('incrby', KEYS[i], ARGV[1])) < 0 then
          redis.call('set', KEYS[i], 0, 'KEEPTTL')
        end
      end
    end
    return 0
    """
    _CREATE = """
    if redis.call('set', KEYS[3], ARGV[1], 'NX') == false then return 0 end
    redis.call('set', KEYS[1], ARGV[2])
    redis.call('set', KEYS[2], ARGV[1])
    redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
    redis.call('set', KEYS[5], ARGV[4])
    return 1
    """

    def __init__(self, url: str) -> None:
        self._redis = redis_client(url)
        self._reserve = self._redis.register_script(self._RESERVE)
        self._adjust = self._redis.register_script(self._ADJUST)
        self._create = self._redis.register_script(self._CREATE)

    @staticmethod
    def _k(*parts: str) -> str:
        return PREFIX + "ck:" + ":".join(parts)

    def create(self, record: KeyRecord, key_hash: str) -> None:
        """See :class:`KeyStore`."""
        keys = [self._k("key", record.id), self._k("hash", key_hash), self._k("name", record.name)]
        with redis_errors():
            created = self._create(
                keys=[*keys, self._k("ids"), self._k("hashof", record.id)],
                args=[record.id, _dump(record), record.created_at, key_hash],
            )
        if not created:
            raise _taken()

    def get(self, key_id: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        with redis_errors():
            data = self._redis.get(self._k("key", key_id))
        return None if data is None else KeyRecord.from_json(json.loads(data))

    def _via(self, index: str, value: str) -> KeyRecord | None:
        with redis_errors():
            key_id = self._redis.get(self._k(index, value))
        return None if key_id is None else self.get(key_id)

    def by_hash(self, key_hash: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        return self._via("hash", key_hash)

    def by_name(self, name: str) -> KeyRecord | None:
        """See :class:`KeyStore`."""
        return self._via("name", name)

    def all(self) -> list[KeyRecord]:
        """See :class:`KeyStore`."""
        with redis_errors():
            ids = self._redis.zrange(self._k("ids"), 0, -1)
            values = self._redis.mget([self._k("key", i) for i in ids]) if ids else []
        return [KeyRecord.from_json(json.loads(v)) for v in values if v is not None]

    def replace(self, record: KeyRecord) -> None:
        """See :class:`KeyStore`."""
        old = self.get(record.id)
        if old is None:
            return
        with redis_errors():
            if old.name != record.name:
                if not self._redis.set(self._k("name", record.name), record.id, nx=True):
                    raise _taken()
                self._redis.delete(self._k("name", old.name))
            self._redis.set(self._k("key", record.id), _dump(record))

    def delete(self, key_id: str) -> bool:
        """See :class:`KeyStore`."""
        old = self.get(key_id)
        if old is None:
            return False
        with redis_errors():
            key_hash = self._redis.get(self._k("hashof", key_id)) or ""
            self._redis.delete(
                self._k("key", key_id),
                self._k("name", old.name),
                self._k("hash", key_hash),
                self._k("hashof", key_id),
            )
            self._redis.zrem(self._k("ids"), key_id)
        return True

    def reserve(self, counters: Sequence[Counter]) -> int | None:
        """See :class:`KeyStore`."""
        args: list[Any] = []
        for counter in counters:
            args += [counter.limit, counter.amount, int((counter.ttl or 0) * 1000)]
        with redis_errors():
            refused = int(self._reserve(keys=[self._k("n", c.name) for c in counters], args=args))
        return refused - 1 if refused else None

    def adjust(self, names: Sequence[str], delta: int) -> None:
        """See :class:`KeyStore`."""
        if names and delta:
            with redis_errors():
                self._adjust(keys=[self._k("n", name) for name in names], args=[delta])

    def read(self, names: Sequence[str]) -> list[int]:
        """See :class:`KeyStore`."""
        if not names:
            return []
        with redis_errors():
            values = self._redis.mget([self._k("n", name) for name in names])
        return [int(v or 0) for v in values]

    def add_usage(self, row: UsageRow) -> None:
        """See :class:`KeyStore`."""
        key = self._k("use", row.day, row.key_id, row.model)
        member = json.dumps([row.day, row.key_id, row.model])
        with redis_errors():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(key, "key_name", row.key_name)
            for field in USAGE_FIELDS:
                if getattr(row, field):
                    pipe.hincrby(key, field, getattr(row, field))
            pipe.zadd(self._k("use"), {member: 0})
            pipe.execute()

    def usage(self, first_day: str, last_day: str) -> list[UsageRow]:
        """See :class:`KeyStore`."""
        with redis_errors():
            # Every member has score 0, so the set is ordered by its JSON text: by day first.
            members = [
                json.loads(m)
                for m in self._redis.zrangebylex(self._k("use"), f'[["{first_day}"', "+")
            ]
            members = [m for m in members if first_day <= m[0] <= last_day]
            pipe = self._redis.pipeline(transaction=False)
            for day, key_id, model in members:
                pipe.hgetall(self._k("use", day, key_id, model))
            hashes = pipe.execute()
        rows = []
        for (day, key_id, model), data in zip(members, hashes, strict=True):
            numbers = {field: int(data.get(field, 0)) for field in USAGE_FIELDS}
            rows.append(UsageRow(day, key_id, data.get("key_name", ""), model, **numbers))
        rows.sort(key=lambda r: (r.day, r.key_name, r.model))
        return rows


def _dump(record: KeyRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True)


def create_key_store(url: str) -> KeyStore:
    """The key store at a STORE_URL: ``sqlite:///...``, ``redis://...`` or ``memory://``."""
    if url.startswith("memory://"):
        return SqlKeyStore(None)
    if url.startswith("sqlite://"):
        return SqlKeyStore(os.path.expanduser(sqlite_path(url)))
    return RedisKeyStore(url)
