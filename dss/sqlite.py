"""What every SQLite-backed port here shares: an immediate (write-locking) transaction."""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

__all__ = ["immediate"]


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception. The write lock is taken at BEGIN, so
    concurrent writers (threads or processes) queue on the busy timeout instead of failing at COMMIT.
    The connection must be in autocommit mode (`isolation_level=None`)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
