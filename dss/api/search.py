"""HTTP adapter for POST /search: run an Elasticsearch query against one replica's index."""
from __future__ import annotations

import json
import urllib.parse
from typing import Any

from dss.api.responses import page_headers, public_base, reply
from dss.errors import IllegalArguments
from dss.jsonlimits import check_json
from dss.runtime import Runtime

__all__ = ["post"]

RAW_PAGE_SIZE = 10  # raw output carries whole documents, so its pages are always small


def post(runtime: Runtime, replica: str, body: dict, output_format: str = "summary", per_page: int = 100,
         search_after: str | None = None):
    raw = output_format == "raw"
    size = RAW_PAGE_SIZE if raw else per_page
    es_query = body["es_query"]
    page = runtime.search.search(replica, es_query, size=size, search_after=_decode(search_after), source=raw)
    base = public_base(runtime.config)
    results = [_result(base, replica, hit, raw) for hit in page.hits]
    link = None
    if len(results) == size:  # a full page: there may be more (an exactly full last page links to an empty one)
        query = {"per_page": per_page, "replica": replica, "search_after": _encode(page.hits[-1].sort),
                 "output_format": output_format}
        link = f'<{base}/v1/search?{urllib.parse.urlencode(query)}>; rel="next"'
    response = {"es_query": es_query, "results": results, "total_hits": page.total}
    return reply(response, 206 if link else 200, page_headers("results", link))


def _result(base: str, replica: str, hit: Any, raw: bool) -> dict:
    uuid, _, version = hit.id.partition(".")
    query = urllib.parse.urlencode({"version": version, "replica": replica})
    result = {"bundle_fqid": hit.id, "bundle_url": f"{base}/v1/bundles/{uuid}?{query}", "search_score": hit.score}
    if raw:
        result["metadata"] = hit.source
    return result


def _encode(sort_values: list) -> str:
    return json.dumps(sort_values, separators=(",", ":"))


def _decode(cursor: str | None) -> list | None:
    if not cursor:
        return None
    try:
        check_json(cursor, max_depth=1)  # a list of sort values: refused before json.loads could recurse
        values = json.loads(cursor)
    except ValueError:  # UnsafeJSON included
        values = None
    if not isinstance(values, list) or not all(v is None or isinstance(v, (str, int, float)) for v in values):
        raise IllegalArguments("search_after is not a cursor this server issued")
    return values
