"""A small pool of SQLite connections, owned by one store.

An operation borrows a connection (SQLite connections must not be used by two threads at once)
and gives it back when done. At most `idle_max` idle connections are kept; one borrowed beyond
that (a burst wider than the pool) is closed on return. So the open handles on the database
file are bounded by the store, not by how many threads the server has created over its life
(anyio retires idle worker threads and makes new ones, which leaked one connection each when
they were per-thread).

Each lease carries the pool's *generation*: `renew()` starts a new one (the store adopted a
database file put back at its path), and connections of an older generation are closed on
return rather than reused, since they are open on the replaced file.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress


class ConnectionPool:
    def __init__(self, open_connection: Callable[[], sqlite3.Connection], idle_max: int) -> None:
        self._open = open_connection
        self._idle_max = idle_max
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.generation = 0
        self._closed = False

    @contextmanager
    def lease(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A connection and the generation it belongs to, for one operation; an interrupted
        transaction is rolled back before the connection is handed on."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the gallery store is closed")
            generation = self.generation
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db, generation
        finally:
            if db.in_transaction:  # never hand on an open transaction
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            with self._lock:
                keep = (
                    not self._closed
                    and generation == self.generation
                    and len(self._idle) < self._idle_max
                )
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    def renew(self) -> list[sqlite3.Connection]:
        """Start a new generation; returns the idle connections of the old one (to close)."""
        with self._lock:
            self.generation += 1
            stale, self._idle = self._idle, []
        return stale

    def close(self) -> list[sqlite3.Connection]:
        """Lend no more; returns the idle connections (the caller closes them)."""
        with self._lock:
            connections, self._idle = self._idle, []
            self._closed = True
        return connections
