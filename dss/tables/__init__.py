"""The Table port: a tiny key-value table of JSON bodies under (hash key, sort key), over SQLite or DynamoDB.

It holds the small, hot records that do not belong in a blob store: subscriptions, collection owners,
asynchronous job state. The layout is DynamoDB's: every item has a string `hash_key` (the partition:
what you `query` by) and a string `sort_key` (unique within the partition; queries return items in
its order), and a JSON object `body`. A backend is chosen by URL scheme in :func:`open_table`:

* ``sqlite://<path>`` — one SQLite file (WAL) holding one SQL table per table name; the embedded default.
* ``dynamodb://[region]`` — one DynamoDB table per name, keys ``hash_key``/``sort_key`` (strings) and the
  body as a JSON string attribute ``body``; the endpoint comes from boto3's own configuration
  (``AWS_ENDPOINT_URL`` and friends), so tests point it at moto's server.

Backends implement five primitives (`put`, `get`, `delete`, `query`, `scan`); `count` and `query_slice` are
derived here and overridden where the backend does them more cheaply. Errors are translated at the backend
edge, keeping the original as `__cause__`:

    TableError              the backend failed or refused (unknown table, oversized item, network …)
    └── TableConflict       `put(..., if_absent=True)` found an item already under those keys
"""
from __future__ import annotations

import abc
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Table", "TableError", "TableConflict", "Tables", "open_table", "check_table_name"]

# DynamoDB's rule for table names; SQLite gets the same so that a name valid for one is valid for both.
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")


class TableError(Exception):
    pass


class TableConflict(TableError):
    pass


def check_table_name(name: str) -> str:
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ValueError(f"invalid table name {name!r}: 3-255 characters from [A-Za-z0-9_.-]")
    return name


def _check_key(value: str, what: str) -> None:
    # DynamoDB refuses empty key strings; refusing them everywhere keeps the backends interchangeable.
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")


class Table(abc.ABC):
    """One table of items ``(hash_key, sort_key) → body``. Safe to share between threads."""

    def __init__(self, name: str) -> None:
        self.name = check_table_name(name)

    # --- the contract, checked once here -----------------------------------------------------------
    def put(self, hash_key: str, sort_key: str, body: Mapping[str, Any], *, if_absent: bool = False) -> None:
        """Store ``body`` under the keys, replacing any item there; with ``if_absent``, raise
        TableConflict instead of replacing (atomically: of two racing creates exactly one wins)."""
        _check_key(hash_key, "hash_key")
        _check_key(sort_key, "sort_key")
        if not isinstance(body, Mapping):
            raise TypeError(f"a table body is a JSON object, got {type(body).__name__}")
        self._put(hash_key, sort_key, dict(body), if_absent)

    def get(self, hash_key: str, sort_key: str) -> dict[str, Any] | None:
        """The body stored under the keys, or None."""
        _check_key(hash_key, "hash_key")
        _check_key(sort_key, "sort_key")
        return self._get(hash_key, sort_key)

    def delete(self, hash_key: str, sort_key: str) -> bool:
        """Remove the item; returns whether there was one."""
        _check_key(hash_key, "hash_key")
        _check_key(sort_key, "sort_key")
        return self._delete(hash_key, sort_key)

    def query(self, hash_key: str) -> list[dict[str, Any]]:
        """The bodies of every item under ``hash_key``, in ascending sort key order."""
        _check_key(hash_key, "hash_key")
        return self._query(hash_key)

    def query_slice(self, hash_key: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` bodies under ``hash_key``, from position ``offset`` of ``query``'s order."""
        _check_key(hash_key, "hash_key")
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative, got {offset}, {limit}")
        return self._query_slice(hash_key, offset, limit)

    def count(self, hash_key: str) -> int:
        """How many items ``hash_key`` holds."""
        _check_key(hash_key, "hash_key")
        return self._count(hash_key)

    def scan(self) -> Iterator[dict[str, Any]]:
        """Every body in the table, in no particular order. Items written while a scan runs may or may
        not be seen; the scan pages through the backend rather than loading the whole table at once."""
        return self._scan()

    def close(self) -> None:  # noqa: B027 - optional: backends without connections keep this no-op
        """Release connections; the table may not be used afterwards."""

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- primitives ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _put(self, hash_key: str, sort_key: str, body: dict[str, Any], if_absent: bool) -> None: ...

    @abc.abstractmethod
    def _get(self, hash_key: str, sort_key: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    def _delete(self, hash_key: str, sort_key: str) -> bool: ...

    @abc.abstractmethod
    def _query(self, hash_key: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def _scan(self) -> Iterator[dict[str, Any]]: ...

    def _count(self, hash_key: str) -> int:
        return len(self._query(hash_key))

    def _query_slice(self, hash_key: str, offset: int, limit: int) -> list[dict[str, Any]]:
        return self._query(hash_key)[offset:offset + limit]


def open_table(url: str, name: str, **options: Any) -> Table:
    """The table ``name`` of the backend at ``url`` (``sqlite://<path>`` or ``dynamodb://[region]``).

    Options go to the backend: DynamoDB takes ``client=`` (a ready boto3 client, so one is shared by many
    tables) and ``create_if_missing=`` (create the table on open; deployments create it with Terraform).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"table URL needs a scheme: {url!r}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from dss.tables.sqlite import SQLiteTable
        return SQLiteTable(rest, name, **options)
    if scheme == "dynamodb":
        from dss.tables.dynamodb import DynamoDBTable
        return DynamoDBTable(name, region=rest.strip("/") or None, **options)
    raise ValueError(f"no table backend for scheme {scheme!r} in {url!r}")


class Tables:
    """The tables of one deployment: opens each name once, behind one URL, and closes them together.

    ``prefix`` namespaces the names (e.g. ``dss-<stage>-``) so that stages can share a DynamoDB account.
    """

    def __init__(self, url: str, *, prefix: str = "", **options: Any) -> None:
        self.url = url
        self.prefix = prefix
        self._options = options
        self._tables: dict[str, Table] = {}
        self._lock = threading.Lock()
        if url.partition("://")[0].lower() == "dynamodb" and "client" not in options:
            # One client for every table: SDK clients are built once per process.
            from dss.tables.dynamodb import dynamodb_client
            self._options["client"] = dynamodb_client(url.partition("://")[2].strip("/") or None)

    def __call__(self, name: str) -> Table:
        full_name = self.prefix + name
        with self._lock:
            table = self._tables.get(full_name)
            if table is None:
                table = self._tables[full_name] = open_table(self.url, full_name, **self._options)
            return table

    def close(self) -> None:
        with self._lock:
            tables, self._tables = list(self._tables.values()), {}
        for table in tables:
            table.close()
