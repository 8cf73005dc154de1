"""The Elasticsearch backend's requests and error translation, against a recording stand-in client.

The behaviour of real Elasticsearch is covered by the shared suites (conformance, semantics,
percolation), which run against it when DSS_TEST_ES_URL is set. These tests pin what we send.
"""
from __future__ import annotations

from typing import Any

import pytest
from elasticsearch import exceptions as es

from dss.index import InvalidQuery, SearchIndexError, SearchUnavailable
from dss.index.elasticsearch import ElasticsearchSearchIndex

INDEX = "dss-dev-aws-docs"
ALIAS = "dss-dev-aws-docs-alias"


class _Indices:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.created: dict[str, Any] = {}
        self.properties: dict[str, Any] = {}

    def exists(self, index: str) -> bool:
        return index in self.created

    def create(self, index: str, body: dict[str, Any]) -> None:
        self.created[index] = body
        self.properties = dict(body["mappings"]["properties"])

    def get_mapping(self, index: str) -> dict[str, Any]:
        return {index: {"mappings": {"properties": self.properties}}}

    def refresh(self, index: str) -> None:
        self.client.calls.append(("refresh", index))

    def delete(self, index: str, ignore: Any = None) -> None:
        self.created.pop(index, None)


class FakeClient:
    def __init__(self) -> None:
        self.indices = _Indices(self)
        self.calls: list[tuple[Any, ...]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        self.search_response: dict[str, Any] = {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
        self.fail_with: Exception | None = None

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def index(self, index: str, id: str, body: dict[str, Any], refresh: str = "false") -> None:  # noqa: A002
        self._maybe_fail()
        self.calls.append(("index", index, id, body, refresh))
        self.stored[id] = body
        for key in body:  # a crude dynamic mapping: top-level fields only
            self.indices.properties.setdefault(key, {"type": "keyword"})

    def get(self, index: str, id: str, ignore: Any = None) -> dict[str, Any]:  # noqa: A002
        if id in self.stored:
            return {"found": True, "_id": id, "_source": self.stored[id]}
        return {"found": False}

    def delete(self, index: str, id: str, refresh: str, ignore: Any = None) -> None:  # noqa: A002
        self.calls.append(("delete", index, id))
        self.stored.pop(id, None)

    def search(self, index: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        self._maybe_fail()
        self.calls.append(("search", index, body, params))
        return self.search_response

    def close(self) -> None:
        self.calls.append(("close",))


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    fake = FakeClient()

    def scan(client: FakeClient, index: str, query: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
        fake.calls.append(("scan", index, query, params))
        if "percolate" in query["query"]:
            return [{"_id": "subscription-s2"}, {"_id": "subscription-s1"}]
        return [{"_id": key, "_source": body} for key, body in fake.stored.items() if "uuid" not in body]

    def bulk(client: FakeClient, actions: list[dict[str, Any]], **params: Any) -> tuple[int, list[Any]]:
        fake.calls.append(("bulk", [action["_id"] for action in actions], params))
        for action in actions:
            fake.stored[action["_id"]] = action["_source"]
        return len(actions), []

    monkeypatch.setattr("elasticsearch.helpers.scan", scan)
    monkeypatch.setattr("elasticsearch.helpers.bulk", bulk)
    return fake


@pytest.fixture
def index(client: FakeClient) -> ElasticsearchSearchIndex:
    return ElasticsearchSearchIndex(client, stage="dev")


def test_index_is_created_with_the_original_mapping(index: ElasticsearchSearchIndex, client: FakeClient) -> None:
    index.index("aws", "u.1", {"uuid": "u"})
    body = client.indices.created[INDEX]
    assert body["aliases"] == {ALIAS: {}}
    template = body["mappings"]["dynamic_templates"][0]["strings_as_keywords"]
    assert template["match_mapping_type"] == "string"
    assert template["mapping"]["type"] == "keyword" and template["mapping"]["ignore_above"] == 256
    assert template["mapping"]["fields"] == {"text": {"type": "text"}}
    normalizer = body["settings"]["analysis"]["normalizer"][template["mapping"]["normalizer"]]
    assert normalizer["filter"] == ["lowercase"]
    assert body["mappings"]["properties"]["query"] == {"type": "percolator"}
    assert body["mappings"]["properties"]["uuid"] == {"type": "keyword"}
    assert body["mappings"]["properties"]["manifest"]["properties"]["version"] == {"type": "keyword"}
    assert body["settings"]["index"]["percolator"]["map_unmapped_fields_as_string"] is True
    assert body["mappings"]["date_detection"] is True


def test_search_request(index: ElasticsearchSearchIndex, client: FakeClient) -> None:
    client.search_response = {"hits": {"total": {"value": 12, "relation": "eq"}, "hits": [
        {"_id": "u.2", "_score": None, "sort": ["u", "2"], "_source": {"uuid": "u"}}]}}
    page = index.search("aws", {"query": {"term": {"a": 1}}, "sort": ["ignored"], "size": 3}, size=10,
                        search_after=["v", "1"], source=False)
    _, target, body, params = client.calls[-1]
    assert target == ALIAS
    assert body["query"] == {"bool": {"must": [{"term": {"a": 1}}], "filter": [{"exists": {"field": "uuid"}}]}}
    assert body["sort"] == [{"uuid": {"order": "desc"}}, {"manifest.version": {"missing": "_last", "order": "desc"}}]
    assert body["_source"] is False and body["search_after"] == ["v", "1"] and "size" not in body
    assert params == {"size": 10, "track_total_hits": "true"}
    assert page.total == 12
    assert [(hit.id, hit.sort, hit.source) for hit in page.hits] == [("u.2", ["u", "2"], None)]


def test_raw_search_keeps_source_filtering(index: ElasticsearchSearchIndex, client: FakeClient) -> None:
    index.search("aws", {"_source": ["uuid"]}, size=10)
    body = client.calls[-1][2]
    assert body["_source"] == ["uuid"]
    assert body["query"]["bool"]["must"] == [{"match_all": {}}]


def test_subscriptions_are_percolator_documents(index: ElasticsearchSearchIndex, client: FakeClient) -> None:
    index.add_subscription_query("aws", "s1", {"query": {"match_all": {}}})
    assert client.calls[-1] == ("index", INDEX, "subscription-s1", {"query": {"match_all": {}}}, "true")
    with pytest.raises(InvalidQuery):
        index.add_subscription_query("aws", "s1", {"match_all": {}})
    assert index.percolate("aws", {"uuid": "u"}) == ["s1", "s2"]
    assert client.calls[-1][2] == {"query": {"percolate": {"field": "query", "document": {"uuid": "u"}}}}
    index.remove_subscription_query("aws", "s1")
    assert client.calls[-1] == ("delete", INDEX, "subscription-s1")
    assert index.get("aws", "subscription-s1") is None


def test_new_fields_store_subscriptions_again(index: ElasticsearchSearchIndex, client: FakeClient) -> None:
    index.add_subscription_query("aws", "s1", {"query": {"term": {"colour": "red"}}})
    index.index("aws", "u.1", {"uuid": "u", "manifest": {"version": "1"}})
    assert not any(call[0] == "bulk" for call in client.calls)
    index.index("aws", "u.2", {"uuid": "u", "colour": "red"})
    bulk = [call for call in client.calls if call[0] == "bulk"]
    assert bulk and bulk[0][1] == ["subscription-s1"]
    index.index("aws", "u.3", {"uuid": "u", "colour": "blue", "nothing": None})  # nothing new to map
    assert len([call for call in client.calls if call[0] == "bulk"]) == 1


@pytest.mark.parametrize("error,expected", [
    (es.RequestError(400, "parsing_exception", {"error": {"root_cause": [
        {"type": "parsing_exception", "reason": "unknown query [foo]"}], "type": "parsing_exception"}}), InvalidQuery),
    (es.ConnectionError("N/A", "refused", None), SearchUnavailable),
    (es.ConnectionTimeout("TIMEOUT", "timed out", None), SearchUnavailable),
    (es.TransportError(429, "too_many_requests", {}), SearchUnavailable),
    (es.TransportError(503, "unavailable", {}), SearchUnavailable),
    (es.AuthorizationException(403, "forbidden", {}), SearchIndexError),
])
def test_errors_are_translated(index: ElasticsearchSearchIndex, client: FakeClient, error: Exception,
                               expected: type[Exception]) -> None:
    index.refresh("aws")
    client.fail_with = error
    with pytest.raises(expected) as raised:
        index.search("aws", {"query": {"match_all": {}}}, size=1)
    assert raised.value.__cause__ is error
    if expected is InvalidQuery:
        assert "unknown query [foo]" in str(raised.value)


def test_from_url_builds_a_client_without_connecting() -> None:
    index = ElasticsearchSearchIndex.from_url("http://localhost:1", stage="dev")
    assert index.index_name("gcp") == "dss-dev-gcp-docs"
    assert index.alias_name("gcp") == "dss-dev-gcp-docs-alias"
    index.close()
