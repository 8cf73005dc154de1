"""The SearchIndex port: bundle documents per replica, searched with the Elasticsearch query DSL.

One `SearchIndex` serves a whole deployment; every call names the replica (`aws`, `gcp`) it works on,
and each replica has its own documents, field mapping and subscription queries. A backend is chosen by
URL scheme in `open_search_index`: `sqlite://<dir-or-file>` is the embedded engine, `http(s)://` is
Elasticsearch (or a 7.10-compatible OpenSearch). Backend modules are imported lazily, so the embedded
default never imports the Elasticsearch client.

Errors: backends translate whatever their engine raises into this vocabulary, keeping the original as
`__cause__`:

    SearchIndexError
    ├── QueryError            the query cannot be run (the API answers 400 elasticsearch_bad_request);
    │   │                     the message names the offending construct
    │   ├── InvalidQuery      malformed or ill-typed for the mapping (Elasticsearch would reject it too)
    │   └── UnsupportedQuery  valid Elasticsearch, but this backend does not implement the construct
    ├── DocumentRejected      the backend refused a document (e.g. an object where a value was mapped)
    └── SearchUnavailable     a transient failure: try again later (the API answers 503)
"""
from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SearchIndex", "SearchPage", "Hit", "SearchIndexError", "QueryError", "InvalidQuery",
    "UnsupportedQuery", "DocumentRejected", "SearchUnavailable", "open_search_index", "check_replica",
    "FORCED_SORT",
]

# The sort the server imposes on every search, as Elasticsearch spells it. Clients cannot change it.
FORCED_SORT: tuple[Mapping[str, Any], ...] = (
    {"uuid": {"order": "desc"}},
    {"manifest.version": {"missing": "_last", "order": "desc"}},
)

_REPLICA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SearchIndexError(Exception):
    pass


class QueryError(SearchIndexError):
    pass


class InvalidQuery(QueryError):
    pass


class UnsupportedQuery(QueryError):
    pass


class DocumentRejected(SearchIndexError):
    pass


class SearchUnavailable(SearchIndexError):
    pass


@dataclass(frozen=True)
class Hit:
    """One matching document. `sort` is opaque: pass it back as `search_after` to get the next page."""
    id: str
    score: float | None
    sort: list[Any]
    source: dict[str, Any] | None = None


@dataclass(frozen=True)
class SearchPage:
    total: int
    hits: list[Hit] = field(default_factory=list)


def check_replica(replica: str) -> str:
    if not isinstance(replica, str) or not _REPLICA_NAME.match(replica):
        raise ValueError(f"invalid replica name {replica!r}")
    return replica


class SearchIndex(abc.ABC):
    """Bundle documents of every replica of one deployment, with search and subscription matching.

    Documents are JSON objects (see `dss.index.document`); `doc_id` is `"<uuid>.<version>"`. Indexing
    the same id again replaces the document. Searches see every write that returned before they began.
    """

    @abc.abstractmethod
    def index(self, replica: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        """Insert or replace one document. Raises DocumentRejected if the backend refuses it."""

    def index_many(self, replica: str, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Index several documents; backends may do it in one round trip. Returns how many were given."""
        count = 0
        for doc_id, doc in docs:
            self.index(replica, doc_id, doc)
            count += 1
        return count

    @abc.abstractmethod
    def get(self, replica: str, doc_id: str) -> dict[str, Any] | None:
        """The stored document, or None."""

    def existing(self, replica: str, doc_ids: Iterable[str]) -> set[str]:
        """Those of `doc_ids` that have a document (a batch of a few hundred at a time)."""
        return {doc_id for doc_id in doc_ids if self.get(replica, doc_id) is not None}

    @abc.abstractmethod
    def search(self, replica: str, es_query: Mapping[str, Any], *, size: int,
               search_after: Sequence[Any] | None = None, source: bool = True) -> SearchPage:
        """Run a search request body (`{"query": …, "_source": …}`) against one replica.

        Hits come in the forced order `uuid desc, manifest.version desc (missing last)`; `total` counts
        every match, not only this page. `search_after` is the `sort` of the last hit of the previous
        page. With `source=False` hits carry no document; otherwise `_source` filtering in the body
        applies. Scores are not computed (Elasticsearch returns null when sorting by fields).
        Raises QueryError for a query the backend cannot run.
        """

    @abc.abstractmethod
    def add_subscription_query(self, replica: str, sub_id: str, es_query: Mapping[str, Any]) -> None:
        """Store (or replace) a subscription's `{"query": …}`; raises QueryError if it cannot be run."""

    @abc.abstractmethod
    def remove_subscription_query(self, replica: str, sub_id: str) -> None:
        """Forget a subscription query; unknown ids are ignored."""

    @abc.abstractmethod
    def percolate(self, replica: str, doc: Mapping[str, Any]) -> list[str]:
        """Ids of the stored subscriptions whose query matches `doc`, the same way a search would.

        The document has no id here (as in an Elasticsearch percolate query), so `ids` clauses never
        match it.
        """

    def refresh(self, replica: str) -> None:
        """Make recent writes visible to search; a no-op where they already are."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the index may not be used afterwards."""

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_REMOTE_ONLY_OPTIONS = ("stage", "refresh_writes", "aws_sigv4")


def open_search_index(url: str, **options: Any) -> SearchIndex:
    """Build the backend for `url`: `sqlite://<path>` (embedded) or `http(s)://host[:port]` (Elasticsearch).

    Options are passed to the backend's constructor (for example `stage=` for Elasticsearch index
    names, or `client=` to inject a ready OpenSearch client). The options that only concern a remote
    cluster (`stage`, `refresh_writes`, `aws_sigv4`) are ignored by the embedded engine, which keeps one
    deployment per directory and makes every write visible at once.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"search index URL needs a scheme: {url!r}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from dss.index.embedded import EmbeddedSearchIndex
        for name in _REMOTE_ONLY_OPTIONS:
            options.pop(name, None)
        return EmbeddedSearchIndex(rest, **options)
    if scheme in ("http", "https"):
        from dss.index.elasticsearch import ElasticsearchSearchIndex
        return ElasticsearchSearchIndex.from_url(url, **options)
    raise ValueError(f"no search index backend for scheme {scheme!r} in {url!r}")
