"""SQLite store files created by several workers at once (STORE_URL=sqlite:///...)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from chatservice.keystore import SqlKeyStore
from chatservice.state import SqliteState, use_wal

#: Seconds another connection keeps its write lock on the new file: well inside the 2 s a
#: store waits for a lock, far longer than SQLite takes to refuse without waiting.
HELD = 0.3


def write_locked(path: str) -> sqlite3.Connection:
    """A connection holding the write lock of a new, empty file in rollback-journal mode:
    where a second worker finds the first one creating its tables."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.parametrize("store", [SqliteState, SqlKeyStore])
def test_a_store_opens_a_new_file_that_another_worker_is_writing(tmp_path, store):
    # Two workers starting on a new volume: SQLite refuses the switch to WAL at once, without
    # waiting its busy timeout, while the other holds the lock (a start-up failure, then
    # "connection reset" at the first request, about one two-worker start in a hundred).
    path = str(tmp_path / "chatservice.db")
    holder = write_locked(path)
    release = threading.Timer(HELD, holder.rollback)
    release.start()
    try:
        store(path)
    finally:
        release.join()
        holder.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_lock_held_past_the_timeout_is_still_an_error(tmp_path):
    path = str(tmp_path / "chatservice.db")
    holder = write_locked(path)
    try:
        with sqlite3.connect(path) as db, pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(db, timeout=0.05)
    finally:
        holder.close()
