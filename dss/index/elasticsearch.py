"""The SearchIndex port over OpenSearch (or Elasticsearch 7.10), with the official `opensearch-py` client.

The client is chosen by URL: a domain managed by AWS (`*.es.amazonaws.com`, `*.aos.<region>.on.aws`,
`*.aoss.amazonaws.com`) gets requests signed with SigV4 (`AWSV4SignerAuth`, the credentials of the
process: the Lambda's role in the cloud); any other http(s) URL is a self-managed cluster spoken to
plainly. `aws_sigv4=True/False` overrides the choice (DSS_SEARCH_AWS_SIGV4).

Per replica there is one index, `dss-<stage>-<replica>-docs`, behind the alias
`dss-<stage>-<replica>-docs-alias` that searches use. It holds the bundle documents and, as in the
original service, the subscription queries in a `percolator` field named `query` (documents with id
`subscription-<id>` and no `uuid`; searches filter on `uuid` to leave them out). The mapping is the
original's: strings become keywords with a lower-casing normaliser, ignore_above 256 and an analysed
`.text` sub-field; date detection is on; `uuid` and `manifest.version` are raw keywords. Malformed
values are ignored (as the embedded engine does) rather than failing the whole document.

Elasticsearch parses a percolator query against the mapping of the moment it is stored (an unmapped
field is taken for a text field). So when a document brings new fields, every stored subscription query
is stored again, as the original did (its workaround for elastic/elasticsearch#5750). OpenSearch 2.19
takes an unmapped field for text only while no object on its path is mapped yet: it refuses a query on
a new field under an object that documents already have (`files.new_json.x` once any document has
`files`). Such a query is kept as a pending subscription (`pending_query`, stored but not indexed) and
becomes a percolator query when the mapping grows, before the document that brought the field is
percolated (the index handler indexes, then notifies). Until then `percolate` fetches the pending queries
with the percolator's matches (one request) and decides them with the embedded engine's matcher: every
field they lack a mapping for is absent from every document, so a `must_not` on it matches, as it does
in a search.

Errors from the client are translated here: a 400 is an InvalidQuery (or DocumentRejected when
indexing), connection problems, timeouts, 429 and 5xx are SearchUnavailable; the original error is
kept as `__cause__`.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dss.index.backend import (
    FORCED_SORT,
    DocumentRejected,
    Hit,
    InvalidQuery,
    SearchIndex,
    SearchIndexError,
    SearchPage,
    SearchUnavailable,
    UnsupportedQuery,
    check_replica,
)
from dss.index.mapping import FieldMap, analyse
from dss.index.percolator import Percolator
from dss.index.query import parse_search_body

__all__ = ["ElasticsearchSearchIndex", "index_settings", "index_mappings", "SUBSCRIPTION_PREFIX"]

logger = logging.getLogger(__name__)

SUBSCRIPTION_PREFIX = "subscription-"
_NORMALIZER = "dss_lowercase"
_TRANSIENT_STATUSES = {429, 502, 503, 504}
_PERCOLATE_PAGE = 10000  # index.max_result_window: one request up to that many matches
_UNMAPPED = "No field mapping can be found"


def index_settings() -> dict[str, Any]:
    return {
        "index": {
            "mapping": {"total_fields": {"limit": 10000}, "ignore_malformed": True},
            "percolator": {"map_unmapped_fields_as_text": True},
        },
        "analysis": {"normalizer": {_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}}},
    }


def index_mappings() -> dict[str, Any]:
    return {
        "date_detection": True,
        "dynamic_templates": [{
            "strings_as_keywords": {
                "match_mapping_type": "string",
                "mapping": {"type": "keyword", "normalizer": _NORMALIZER, "ignore_above": 256,
                            "fields": {"text": {"type": "text"}}},
            },
        }],
        "properties": {
            "uuid": {"type": "keyword"},
            "manifest": {"properties": {"version": {"type": "keyword"}}},
            "query": {"type": "percolator"},
            "pending_query": {"type": "object", "enabled": False},  # kept, not indexed: see the docstring
        },
    }


def _reason(error: Any) -> str:
    info = getattr(error, "info", None)
    if isinstance(info, Mapping) and isinstance(info.get("error"), Mapping):
        details = info["error"]
        causes = details.get("root_cause") or [details]
        cause = causes[0] if isinstance(causes[0], Mapping) else details
        reason = cause.get("reason") or details.get("reason")
        return f"{cause.get('type', details.get('type', 'error'))}: {reason}"
    return str(getattr(error, "error", None) or error)


@contextlib.contextmanager
def _translated(rejected: type[SearchIndexError] = InvalidQuery) -> Iterator[None]:
    from opensearchpy import exceptions as es

    try:
        yield
    except es.RequestError as error:
        raise rejected(_reason(error)) from error
    except es.ConnectionError as error:  # includes timeouts
        raise SearchUnavailable(f"Elasticsearch is unreachable: {error}") from error
    except es.TransportError as error:
        status = error.status_code if isinstance(error.status_code, int) else 0
        if status in _TRANSIENT_STATUSES or status >= 500:
            raise SearchUnavailable(f"Elasticsearch answered {status}: {_reason(error)}") from error
        if status == 404 and rejected is InvalidQuery:  # our own index exists: the query names another one
            raise InvalidQuery(_reason(error)) from error  # (a terms lookup in a missing index)
        raise SearchIndexError(f"Elasticsearch answered {status}: {_reason(error)}") from error
    except (es.OpenSearchException, es.ImproperlyConfigured) as error:
        raise SearchIndexError(f"Elasticsearch client error: {error}") from error


def _paths(value: Any, prefix: str = "") -> Iterator[str]:
    """The dotted paths dynamic mapping would add for a document (nulls and empty arrays map nothing)."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            if child is None or child == []:
                continue
            path = f"{prefix}{key}"
            if not isinstance(child, list) or any(item is not None for item in child):
                yield path
            yield from _paths(child, path + ".")
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item, prefix)


def _mapped_paths(properties: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        yield path
        yield from _mapped_paths(spec.get("properties", {}), path + ".")


_AWS_HOSTS = (
    (re.compile(r"\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.es\.amazonaws\.com$"), "es"),
    (re.compile(r"\.aos\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.on\.aws$"), "es"),
    (re.compile(r"\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.aoss\.amazonaws\.com$"), "aoss"),
)


def aws_target(url: str) -> tuple[str, str] | None:
    """(region, service) of an AWS-managed OpenSearch endpoint, or None for any other URL."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    for pattern, service in _AWS_HOSTS:
        found = pattern.search(host)
        if found:
            return found.group("region"), service
    return None


def _client(url: str, *, timeout: float, aws_sigv4: bool | None, **client_options: Any) -> Any:
    from opensearchpy import OpenSearch

    target = aws_target(url)
    if aws_sigv4 is None:
        aws_sigv4 = target is not None
    if not aws_sigv4:
        return OpenSearch([url], timeout=timeout, retry_on_timeout=True, max_retries=3, **client_options)
    import boto3
    from opensearchpy import AWSV4SignerAuth, RequestsHttpConnection

    session = boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise SearchIndexError("SigV4 signing for the search domain needs AWS credentials, and none were found")
    region, service = target or (session.region_name or "us-east-1", "es")
    logger.info("Signing search requests with SigV4 (%s, %s)", region, service)
    return OpenSearch([url], http_auth=AWSV4SignerAuth(credentials, region, service),
                      connection_class=RequestsHttpConnection, timeout=timeout, retry_on_timeout=True,
                      max_retries=3, **client_options)


class ElasticsearchSearchIndex(SearchIndex):
    """`client` is an `opensearchpy.OpenSearch`; one instance serves every replica of `stage`."""

    def __init__(self, client: Any, *, stage: str = "local", refresh_writes: bool = False) -> None:
        self._client = client
        self._stage = stage
        self._refresh = "true" if refresh_writes else "false"
        self._ready: set[str] = set()
        self._known_paths: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, stage: str = "local", client: Any = None, timeout: float = 30.0,
                 refresh_writes: bool = False, aws_sigv4: bool | None = None,
                 **client_options: Any) -> ElasticsearchSearchIndex:
        if client is None:
            client = _client(url, timeout=timeout, aws_sigv4=aws_sigv4, **client_options)
        return cls(client, stage=stage, refresh_writes=refresh_writes)

    # ------------------------------------------------------------------------------ index names

    def index_name(self, replica: str) -> str:
        return f"dss-{self._stage}-{check_replica(replica)}-docs"

    def alias_name(self, replica: str) -> str:
        return self.index_name(replica) + "-alias"

    def _index(self, replica: str) -> str:
        name = self.index_name(replica)
        if replica not in self._ready:
            with self._lock, _translated(SearchIndexError):
                if replica not in self._ready:
                    self._create(name, self.alias_name(replica))
                    self._known_paths[replica] = self._load_paths(name)
                    self._ready.add(replica)
        return name

    def _create(self, name: str, alias: str) -> None:
        from opensearchpy import exceptions as es

        if self._client.indices.exists(index=name):
            return
        body = {"settings": index_settings(), "mappings": index_mappings(), "aliases": {alias: {}}}
        try:
            self._client.indices.create(index=name, body=body)
        except es.RequestError as error:
            if error.error != "resource_already_exists_exception":  # else another process was first
                raise

    def _load_paths(self, name: str) -> set[str]:
        mappings = self._client.indices.get_mapping(index=name)
        paths: set[str] = set()
        for index_mapping in mappings.values():
            paths.update(_mapped_paths(index_mapping.get("mappings", {}).get("properties", {})))
        return paths

    # ------------------------------------------------------------------------------- documents

    def index(self, replica: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        name = self._index(replica)
        with _translated(DocumentRejected):
            self._client.index(index=name, id=doc_id, body=doc, refresh=self._refresh)
        self._after_write(replica, [doc])

    def index_many(self, replica: str, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        from opensearchpy import helpers

        name = self._index(replica)
        batch = list(docs)
        actions = [{"_index": name, "_id": doc_id, "_source": doc} for doc_id, doc in batch]
        with _translated(DocumentRejected):
            _, errors = helpers.bulk(self._client, actions, raise_on_error=False, refresh=self._refresh)
        failures: list[Any] = errors if isinstance(errors, list) else []
        if failures:
            failed = [next(iter(item.values())).get("_id") for item in failures]
            raise DocumentRejected(f"Elasticsearch rejected {len(failures)} documents: {failed[:10]}")
        self._after_write(replica, [doc for _, doc in batch])
        return len(batch)

    def _after_write(self, replica: str, docs: Sequence[Mapping[str, Any]]) -> None:
        known = self._known_paths[replica]
        if all(path in known for doc in docs for path in _paths(doc)):
            return
        name = self.index_name(replica)
        with _translated(SearchIndexError):
            self._known_paths[replica] = self._load_paths(name)
            self._restore_subscriptions(name)

    def _restore_subscriptions(self, name: str) -> None:
        """Store every subscription query again, so that it is parsed against the grown mapping."""
        from opensearchpy import helpers

        stored = helpers.scan(self._client, index=name, _source=True,
                              query={"query": {"bool": {"must_not": {"exists": {"field": "uuid"}}}}})
        actions = [{"_index": name, "_id": hit["_id"], "_source": {"query": hit["_source"].get(
            "query", hit["_source"].get("pending_query"))}} for hit in stored]
        if actions:
            # A query that still names an unmapped field fails and stays as it was (pending).
            _, failures = helpers.bulk(self._client, actions, refresh="true", raise_on_error=False)
            failed = len(failures) if isinstance(failures, list) else 0
            logger.info("Re-stored %d subscription queries of %s after its mapping grew (%d still pending)",
                        len(actions) - failed, name, failed)

    def get(self, replica: str, doc_id: str) -> dict[str, Any] | None:
        name = self._index(replica)
        with _translated(SearchIndexError):
            found = self._client.get(index=name, id=doc_id, ignore=404)
        if not found.get("found") or doc_id.startswith(SUBSCRIPTION_PREFIX):
            return None
        return found["_source"]

    def existing(self, replica: str, doc_ids: Iterable[str]) -> set[str]:
        name = self._index(replica)
        wanted = [doc_id for doc_id in doc_ids if not doc_id.startswith(SUBSCRIPTION_PREFIX)]
        if not wanted:
            return set()
        with _translated(SearchIndexError):
            found = self._client.mget(index=name, body={"ids": wanted}, _source=False)
        return {doc["_id"] for doc in found["docs"] if doc.get("found")}

    def refresh(self, replica: str) -> None:
        name = self._index(replica)
        with _translated(SearchIndexError):
            self._client.indices.refresh(index=name)

    # ---------------------------------------------------------------------------------- search

    def search(self, replica: str, es_query: Mapping[str, Any], *, size: int,
               search_after: Sequence[Any] | None = None, source: bool = True) -> SearchPage:
        parse_search_body(es_query)  # the body keys the embedded engine accepts; it ignores some, as here
        _refuse_reaching_out(es_query.get("query"))
        _refuse_reaching_out(es_query.get("post_filter"))
        self._index(replica)
        body = {key: es_query[key] for key in ("query", "post_filter", "_source", "from") if key in es_query}
        body["query"] = {"bool": {"must": [es_query["query"] if "query" in es_query else {"match_all": {}}],
                                  "filter": [{"exists": {"field": "uuid"}}]}}  # leaves subscriptions out
        body["sort"] = [dict(clause) for clause in FORCED_SORT]
        if not source:
            body["_source"] = False
        if search_after is not None:
            body["search_after"] = list(search_after)
        with _translated():
            response = self._client.search(index=self.alias_name(replica), body=body, size=size,
                                           track_total_hits="true")
        hits = response["hits"]
        total = hits["total"]["value"] if isinstance(hits["total"], Mapping) else hits["total"]
        return SearchPage(total=total, hits=[
            Hit(id=hit["_id"], score=hit.get("_score"), sort=list(hit.get("sort", [])),
                source=hit.get("_source") if source else None) for hit in hits["hits"]])

    # --------------------------------------------------------------------------- subscriptions

    def add_subscription_query(self, replica: str, sub_id: str, es_query: Mapping[str, Any]) -> None:
        if not isinstance(es_query, Mapping) or set(es_query) != {"query"}:
            raise InvalidQuery('a subscription es_query must be an object with exactly one key, "query"')
        _refuse_reaching_out(es_query["query"])
        from opensearchpy import exceptions as es

        name = self._index(replica)
        with _translated():
            try:
                self._client.index(index=name, id=SUBSCRIPTION_PREFIX + sub_id, body={"query": es_query["query"]},
                                   refresh="true")
            except es.RequestError as error:
                if _UNMAPPED not in _reason(error):
                    raise
                # Valid, but on a field no document has yet: pending until the mapping grows.
                self._client.index(index=name, id=SUBSCRIPTION_PREFIX + sub_id,
                                   body={"pending_query": es_query["query"], "pending": True}, refresh="true")

    def remove_subscription_query(self, replica: str, sub_id: str) -> None:
        name = self._index(replica)
        with _translated(SearchIndexError):
            self._client.delete(index=name, id=SUBSCRIPTION_PREFIX + sub_id, refresh="true", ignore=404)

    def percolate(self, replica: str, doc: Mapping[str, Any]) -> list[str]:
        from opensearchpy import helpers

        name = self._index(replica)
        pending = {"bool": {"filter": [{"term": {"pending": True}}], "must_not": [{"exists": {"field": "uuid"}}]}}
        query = {"query": {"bool": {"should": [{"percolate": {"field": "query", "document": doc}}, pending]}}}
        with _translated(SearchIndexError):
            # One request for the usual case; a scroll only when more subscriptions match than one page holds.
            response = self._client.search(index=name, body=query, size=_PERCOLATE_PAGE, _source=["pending_query"],
                                           track_total_hits="true")
            hits = response["hits"]["hits"]
            if response["hits"]["total"]["value"] > len(hits):
                hits = list(helpers.scan(self._client, index=name, query=query, _source=["pending_query"]))
        matched, waiting = [], {}
        for hit in hits:
            if not hit["_id"].startswith(SUBSCRIPTION_PREFIX):
                continue
            sub_id = hit["_id"][len(SUBSCRIPTION_PREFIX):]
            if "pending_query" in (hit.get("_source") or {}):
                waiting[sub_id] = {"query": hit["_source"]["pending_query"]}
            else:
                matched.append(sub_id)
        return sorted(matched + (_match_pending(waiting, doc) if waiting else []))

    # ----------------------------------------------------------------------------------- admin

    def destroy(self) -> None:
        """Delete the indices this instance created or used (for tests and teardown)."""
        with _translated(SearchIndexError):
            for replica in list(self._ready):
                self._client.indices.delete(index=self.index_name(replica), ignore=[404])
        self._ready.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def _match_pending(queries: Mapping[str, Mapping[str, Any]], doc: Mapping[str, Any]) -> list[str]:
    """The pending subscriptions that match `doc`, decided as the embedded engine decides them."""
    fields = FieldMap()
    percolator = Percolator()
    percolator.load(queries, fields, version=None)
    return percolator.match(analyse(doc, fields), fields)


# Queries that read other documents or indices of the cluster, or run scripts on it: a search may read
# the bundles of its replica and nothing else (the embedded engine supports none of these either).
_REACHING_OUT = frozenset({"more_like_this", "percolate", "script", "script_score", "function_score", "terms_set",
                           "wrapper", "geo_shape", "has_child", "has_parent", "parent_id"})


def _refuse_reaching_out(query: Any) -> None:
    """UnsupportedQuery (400) for any such query, or a `terms` lookup, anywhere in `query`. A document
    field named like one of these queries is refused too, when a query names it as a key."""
    if isinstance(query, list):
        for item in query:
            _refuse_reaching_out(item)
    elif isinstance(query, Mapping):
        for key, value in query.items():
            if key in _REACHING_OUT:
                raise UnsupportedQuery(f"[{key}] is not supported in searches")
            if key == "terms" and isinstance(value, Mapping) and any(
                    isinstance(v, Mapping) for k, v in value.items() if k not in ("boost", "_name")):
                raise UnsupportedQuery("[terms] lookup (terms from another document) is not supported")
            _refuse_reaching_out(value)
