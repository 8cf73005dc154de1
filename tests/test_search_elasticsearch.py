"""The cloud backend (OpenSearch through opensearch-py): what only a stand-in or the client itself can show.

The engine's behaviour (mapping, queries, paging, `_source` filtering, percolation, re-storing
subscriptions when the mapping grows) is covered by the shared suites, which run every test against a
real OpenSearch node (tests/infra/opensearch.py). What stays here against a recording stand-in client:
that subscriptions are stored again only when the mapping grew, and the translation of failures a
healthy local node never gives (429, 503, timeouts). And the choice of client: SigV4 for AWS domains.
"""
from __future__ import annotations

from typing import Any

import pytest
from opensearchpy import AWSV4SignerAuth
from opensearchpy import exceptions as es

from dss.index import InvalidQuery, SearchIndexError, SearchUnavailable, open_search_index
from dss.index.elasticsearch import ElasticsearchSearchIndex, aws_target, index_mappings
from tests.infra.opensearch import unique_stage

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

    monkeypatch.setattr("opensearchpy.helpers.scan", scan)
    monkeypatch.setattr("opensearchpy.helpers.bulk", bulk)
    return fake


@pytest.fixture
def index(client: FakeClient) -> ElasticsearchSearchIndex:
    return ElasticsearchSearchIndex(client, stage="dev")


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
    assert index._client.transport.kwargs.get("http_auth") is None  # a plain self-managed cluster
    index.close()


@pytest.mark.parametrize("url,expected", [
    ("https://search-dss-abc123.us-east-1.es.amazonaws.com", ("us-east-1", "es")),
    ("https://vpc-dss-prod-xyz.eu-west-2.es.amazonaws.com:443/", ("eu-west-2", "es")),
    ("https://search-dss-abc123.aos.us-gov-west-1.on.aws", ("us-gov-west-1", "es")),
    ("https://abcdef123.us-west-2.aoss.amazonaws.com", ("us-west-2", "aoss")),
    ("http://127.0.0.1:9200", None),
    ("https://search.example.org", None),
    ("https://es.amazonaws.com.example.org", None),
])
def test_aws_domains_are_recognised(url: str, expected: tuple[str, str] | None) -> None:
    assert aws_target(url) == expected


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def test_aws_domains_get_signed_requests(aws_credentials: None) -> None:
    index = open_search_index("https://search-dss-abc123.us-east-1.es.amazonaws.com", stage="dev")
    auth = index._client.transport.kwargs["http_auth"]  # type: ignore[attr-defined]
    assert isinstance(auth, AWSV4SignerAuth) and (auth.signer.region, auth.service) == ("us-east-1", "es")
    index.close()
    plain = open_search_index("https://search-dss-abc123.us-east-1.es.amazonaws.com", aws_sigv4=False)
    assert plain._client.transport.kwargs.get("http_auth") is None  # type: ignore[attr-defined]
    plain.close()


def test_signed_requests_reach_a_real_node(aws_credentials: None, opensearch_url: str) -> None:
    """SigV4 forced on a plain node (which ignores the signature): the signing path works end to end."""
    index = open_search_index(opensearch_url, stage=unique_stage("sig"), aws_sigv4=True)
    try:
        assert isinstance(index._client.transport.kwargs["http_auth"], AWSV4SignerAuth)  # type: ignore[attr-defined]
        index.index("aws", "u.1", {"uuid": "u", "manifest": {"version": "1"}})
        index.refresh("aws")
        assert [hit.id for hit in index.search("aws", {"query": {"match_all": {}}}, size=10).hits] == ["u.1"]
    finally:
        index.destroy()  # type: ignore[attr-defined]
        index.close()


def test_the_index_on_a_real_node_has_the_original_layout(engine_url: str) -> None:
    index = ElasticsearchSearchIndex.from_url(engine_url, stage=unique_stage("layout"))
    try:
        index.index("aws", "u.1", {"uuid": "u", "manifest": {"version": "1"}, "colour": "Red"})
        client = index._client
        assert client.indices.get_alias(name=index.alias_name("aws")) == {index.index_name("aws"): {
            "aliases": {index.alias_name("aws"): {}}}}
        mapping = client.indices.get_mapping(index=index.index_name("aws"))[index.index_name("aws")]["mappings"]
        assert mapping["properties"]["query"] == {"type": "percolator"}
        assert mapping["properties"]["uuid"] == {"type": "keyword"}
        assert mapping["properties"]["colour"] == index_mappings()["dynamic_templates"][0]["strings_as_keywords"][
            "mapping"]
        settings = client.indices.get_settings(index=index.index_name("aws"))[index.index_name("aws")]["settings"]
        assert settings["index"]["percolator"]["map_unmapped_fields_as_text"] == "true"
    finally:
        index.destroy()
        index.close()


@pytest.mark.parametrize("raw,expected", [(None, None), ("auto", None), ("", None), ("true", True), ("1", True),
                                          ("false", False), ("0", False)])
def test_the_sigv4_setting(tmp_path: Any, raw: str | None, expected: bool | None) -> None:
    from dss.config import Config

    env = {"DSS_DATA_DIR": str(tmp_path)} | ({} if raw is None else {"DSS_SEARCH_AWS_SIGV4": raw})
    assert Config.from_env(env).search_aws_sigv4 is expected
    assert Config.from_env({**env, "DSS_SEARCH_REFRESH_WRITES": "1"}).search_refresh_writes is True


def test_percolation_past_one_page_scrolls(engine_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dss.index.elasticsearch._PERCOLATE_PAGE", 2)
    index = ElasticsearchSearchIndex.from_url(engine_url, stage=unique_stage("scroll"))
    try:
        for name in ("s1", "s2", "s3", "s4", "s5"):
            index.add_subscription_query("aws", name, {"query": {"match_all": {}}})
        index.add_subscription_query("aws", "other", {"query": {"term": {"colour": "blue"}}})
        assert index.percolate("aws", {"uuid": "u", "colour": "red"}) == ["s1", "s2", "s3", "s4", "s5"]
    finally:
        index.destroy()
        index.close()
