"""Search index: bundle documents, Elasticsearch-DSL search, and subscription matching (percolation).

`open_search_index(url)` picks the backend from the URL scheme (`sqlite://` embedded engine,
`http(s)://` Elasticsearch); `build_document` / `tombstone_document` make what gets indexed.
"""
from dss.index.backend import (
    FORCED_SORT,
    DocumentRejected,
    Hit,
    InvalidQuery,
    QueryError,
    SearchIndex,
    SearchIndexError,
    SearchPage,
    SearchUnavailable,
    UnsupportedQuery,
    open_search_index,
)
from dss.index.document import (
    DEFAULT_MANIFEST_FILE_LIMIT,
    build_document,
    doc_id_of,
    normalise_name,
    tombstone_document,
)

__all__ = [
    "SearchIndex", "SearchPage", "Hit", "open_search_index", "FORCED_SORT", "SearchIndexError", "QueryError",
    "InvalidQuery", "UnsupportedQuery", "DocumentRejected", "SearchUnavailable", "build_document",
    "tombstone_document", "normalise_name", "doc_id_of", "DEFAULT_MANIFEST_FILE_LIMIT",
]
