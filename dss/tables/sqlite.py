"""Tables in one SQLite file: one SQL table per table name, WAL, one connection per Table object.

Several Table objects (in several processes) may open the same file: WAL lets readers run beside the
one writer, and the busy timeout queues writers. Inside a process, one lock serialises the calls on a
Table's connection; every call is a single short statement, so there is nothing to gain from more.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dss.tables import Table, TableConflict, TableError

__all__ = ["SQLiteTable"]

_BUSY_TIMEOUT = 30.0
_SCAN_PAGE = 1000


class SQLiteTable(Table):
    def __init__(self, path: str | os.PathLike[str], name: str) -> None:
        super().__init__(name)
        self.path = Path(path)
        if not str(path):
            raise ValueError("a sqlite:// table URL needs a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The name is checked against [A-Za-z0-9_.-], so quoting it makes a safe identifier.
        self._sql_name = f'"{self.name}"'
        # check_same_thread=False: the lock, not SQLite's thread check, guards the connection.
        self._conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None,
                                     check_same_thread=False)
        with self._translated():
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self._sql_name} (hash_key TEXT NOT NULL,"
                               " sort_key TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (hash_key, sort_key))"
                               " WITHOUT ROWID")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise TableError(f"table {self.name!r} in {self.path}: {e}") from e

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock, self._translated():
            return self._conn.execute(sql, params)

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._translated():
            return self._conn.execute(sql, params).fetchall()

    def _put(self, hash_key: str, sort_key: str, body: dict[str, Any], if_absent: bool) -> None:
        verb = "INSERT OR IGNORE" if if_absent else "INSERT OR REPLACE"
        cursor = self._execute(f"{verb} INTO {self._sql_name} (hash_key, sort_key, body) VALUES (?, ?, ?)",
                               (hash_key, sort_key, json.dumps(body)))
        if if_absent and cursor.rowcount == 0:
            raise TableConflict(f"an item already exists under ({hash_key!r}, {sort_key!r}) in {self.name!r}")

    def _get(self, hash_key: str, sort_key: str) -> dict[str, Any] | None:
        rows = self._fetch(f"SELECT body FROM {self._sql_name} WHERE hash_key = ? AND sort_key = ?",
                           (hash_key, sort_key))
        return json.loads(rows[0][0]) if rows else None

    def _delete(self, hash_key: str, sort_key: str) -> bool:
        cursor = self._execute(f"DELETE FROM {self._sql_name} WHERE hash_key = ? AND sort_key = ?",
                               (hash_key, sort_key))
        return cursor.rowcount > 0

    def _query(self, hash_key: str) -> list[dict[str, Any]]:
        rows = self._fetch(f"SELECT body FROM {self._sql_name} WHERE hash_key = ? ORDER BY sort_key", (hash_key,))
        return [json.loads(body) for (body,) in rows]

    def _query_slice(self, hash_key: str, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = self._fetch(f"SELECT body FROM {self._sql_name} WHERE hash_key = ? ORDER BY sort_key LIMIT ? OFFSET ?",
                           (hash_key, limit, offset))
        return [json.loads(body) for (body,) in rows]

    def _count(self, hash_key: str) -> int:
        return int(self._fetch(f"SELECT COUNT(*) FROM {self._sql_name} WHERE hash_key = ?", (hash_key,))[0][0])

    def _scan(self) -> Iterator[dict[str, Any]]:
        # Keyset pages, so the lock is never held while the caller consumes items.
        after: tuple[str, str] | None = None
        while True:
            if after is None:
                rows = self._fetch(f"SELECT hash_key, sort_key, body FROM {self._sql_name}"
                                   " ORDER BY hash_key, sort_key LIMIT ?", (_SCAN_PAGE,))
            else:
                rows = self._fetch(f"SELECT hash_key, sort_key, body FROM {self._sql_name}"
                                   " WHERE (hash_key, sort_key) > (?, ?) ORDER BY hash_key, sort_key LIMIT ?",
                                   (*after, _SCAN_PAGE))
            for _, _, body in rows:
                yield json.loads(body)
            if len(rows) < _SCAN_PAGE:
                return
            after = (rows[-1][0], rows[-1][1])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
