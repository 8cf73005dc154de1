"""Subscription matching: a new document matches exactly the subscriptions whose query finds it."""
from __future__ import annotations

from typing import Any

import pytest

from dss.index import InvalidQuery, SearchIndex, open_search_index
from dss.index.elasticsearch import SUBSCRIPTION_PREFIX
from tests.fixtures.hca_corpus import generate_bundles
from tests.fixtures.search.backends import BACKENDS, close_backend, is_embedded, open_backend
from tests.infra.opensearch import ENGINES
from tests.test_search_conformance import CASES

REPLICA = "aws"
# ids never match a percolated document (it has no id, as in Elasticsearch)
SUBSCRIBABLE = [case for case in CASES if "ids" not in str(case.query)]


@pytest.fixture(scope="module")
def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(bundle.doc_id, bundle.document()) for bundle in generate_bundles(120, seed=11)]


@pytest.fixture(scope="module", params=BACKENDS)
def subscribed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               documents: list[tuple[str, dict[str, Any]]]) -> Any:
    index = open_backend(request.param, tmp_path_factory.mktemp(request.param), request)
    index.index_many(REPLICA, documents)
    if request.param != "embedded-pending":  # that one keeps its documents pending on purpose
        index.refresh(REPLICA)
    for case in SUBSCRIBABLE:
        index.add_subscription_query(REPLICA, case.name, {"query": case.query})
    yield request.param, index
    close_backend(index)


def _searched(index: SearchIndex, query: dict[str, Any]) -> set[str]:
    return {hit.id for hit in index.search(REPLICA, {"query": query}, size=10000, source=False).hits}


def test_percolation_agrees_with_search(subscribed: tuple[str, SearchIndex],
                                        documents: list[tuple[str, dict[str, Any]]]) -> None:
    name, index = subscribed
    found = {case.name: _searched(index, case.query) for case in SUBSCRIBABLE}
    for doc_id, doc in documents:
        expected = sorted(name for name, ids in found.items() if doc_id in ids)
        assert sorted(index.percolate(REPLICA, doc)) == expected, doc_id


def test_removed_subscriptions_stop_matching(subscribed: tuple[str, SearchIndex],
                                             documents: list[tuple[str, dict[str, Any]]]) -> None:
    _, index = subscribed
    index.add_subscription_query(REPLICA, "temporary", {"query": {"match_all": {}}})
    assert "temporary" in index.percolate(REPLICA, documents[0][1])
    index.remove_subscription_query(REPLICA, "temporary")
    index.remove_subscription_query(REPLICA, "never-existed")
    assert "temporary" not in index.percolate(REPLICA, documents[0][1])


def test_ids_never_match_a_percolated_document(subscribed: tuple[str, SearchIndex],
                                               documents: list[tuple[str, dict[str, Any]]]) -> None:
    _, index = subscribed
    doc_id, doc = documents[0]
    index.add_subscription_query(REPLICA, "by-id", {"query": {"ids": {"values": [doc_id]}}})
    try:
        assert "by-id" not in index.percolate(REPLICA, doc)
    finally:
        index.remove_subscription_query(REPLICA, "by-id")


def test_subscription_body_must_hold_a_query(subscribed: tuple[str, SearchIndex]) -> None:
    _, index = subscribed
    with pytest.raises(InvalidQuery):
        index.add_subscription_query(REPLICA, "bare", {"match_all": {}})  # type: ignore[dict-item]


@pytest.mark.parametrize("engine", ENGINES)
def test_real_engines_keep_subscriptions_on_unmapped_fields_pending(tmp_path: Any, engine: str,
                                                                    request: pytest.FixtureRequest) -> None:
    """OpenSearch 2.19 and Elasticsearch 7.10 refuse a percolator query on a field that is not mapped yet
    once an object on its path is (despite index.percolator.map_unmapped_fields_as_text). The backend keeps
    such a subscription pending, decides it with the embedded engine's matcher until a document brings the
    field, and then stores it as a percolator query: the answers are the embedded engine's throughout."""
    index = open_backend(engine, tmp_path, request)
    try:
        index.index(REPLICA, "a.1", {"uuid": "a", "manifest": {"version": "1"}, "files": {"old_json": [{"x": 1}]}})
        index.add_subscription_query(REPLICA, "later", {"query": {"match": {"files.new_json.colour.text": "Deep Red"}}})
        index.add_subscription_query(REPLICA, "count", {"query": {"range": {"files.new_json.count": {"gte": 10}}}})
        index.add_subscription_query(REPLICA, "old", {"query": {"exists": {"field": "files.old_json"}}})
        index.add_subscription_query(REPLICA, "without", {"query": {"bool": {"must_not": [
            {"match": {"files.new_json.colour.text": "red"}}]}}})
        with pytest.raises(InvalidQuery):  # still validated: only the unmapped field is let through
            index.add_subscription_query(REPLICA, "bad", {"query": {"no_such_query": {"files.new_json.x": 1}}})
        new_doc = {"uuid": "b", "manifest": {"version": "1"}, "files": {"new_json": [{"colour": "red", "count": 12}]}}
        stored = index._client.get(index=index.index_name(REPLICA), id=SUBSCRIPTION_PREFIX + "without")  # type: ignore[attr-defined]
        assert "pending_query" in stored["_source"]  # refused by the node as a percolator query, so far
        assert index.percolate(REPLICA, new_doc) == ["count", "later"]  # still pending, decided here
        old_doc = {"uuid": "d", "files": {"old_json": [{"x": 2}]}}
        assert index.percolate(REPLICA, old_doc) == ["old", "without"]
        index.index(REPLICA, "b.1", new_doc)  # the mapping grows: all three are percolator queries now
        assert index.percolate(REPLICA, new_doc) == ["count", "later"]
        assert index.percolate(REPLICA, {"uuid": "c", "files": {"new_json": [{"colour": "blue", "count": 1}]}}) \
            == ["without"]
        assert index.percolate(REPLICA, old_doc) == ["old", "without"]
        assert index.search(REPLICA, {"query": {"match_all": {}}}, size=10).total == 2  # no subscription shows
    finally:
        close_backend(index)


@pytest.mark.parametrize("name", [name for name in BACKENDS if is_embedded(name)])
def test_queries_on_fields_that_appear_later(name: str, tmp_path: Any, request: pytest.FixtureRequest) -> None:
    """A query parsed while its field was unmapped matches once documents bring the field."""
    index = open_backend(name, tmp_path, request)
    try:
        index.index(REPLICA, "a.1", {"uuid": "a", "manifest": {"version": "1"}, "files": {}})
        index.add_subscription_query(REPLICA, "later", {"query": {"match": {"files.new_json.colour.text": "Deep Red"}}})
        index.add_subscription_query(REPLICA, "pattern", {"query": {"multi_match": {
            "query": "red", "fields": ["files.*.colour.text"]}}})
        index.add_subscription_query(REPLICA, "count", {"query": {"range": {"files.new_json.count": {"gte": 10}}}})
        new_doc = {"uuid": "b", "manifest": {"version": "1"},
                   "files": {"new_json": [{"colour": "red", "count": 12}]}}
        assert index.percolate(REPLICA, new_doc) == ["count", "later", "pattern"]  # before it is indexed
        index.index(REPLICA, "b.1", new_doc)
        assert index.percolate(REPLICA, new_doc) == ["count", "later", "pattern"]  # and after
        assert index.percolate(REPLICA, {"uuid": "c", "files": {"new_json": [{"colour": "blue", "count": 1}]}}) == []
    finally:
        close_backend(index)


def test_subscriptions_are_shared_between_instances(tmp_path: Any) -> None:
    first = open_search_index(f"sqlite://{tmp_path}/search")
    second = open_search_index(f"sqlite://{tmp_path}/search")
    try:
        doc = {"uuid": "a", "files": {"x_json": [{"organ": "brain"}]}}
        first.add_subscription_query(REPLICA, "s1", {"query": {"term": {"files.x_json.organ": "brain"}}})
        assert second.percolate(REPLICA, doc) == ["s1"]
        second.add_subscription_query(REPLICA, "s2", {"query": {"exists": {"field": "files.x_json"}}})
        first.remove_subscription_query(REPLICA, "s1")
        assert first.percolate(REPLICA, doc) == ["s2"]
        assert second.percolate(REPLICA, doc) == ["s2"]
    finally:
        first.close()
        second.close()


def test_many_subscriptions_are_matched_exactly(tmp_path: Any) -> None:
    """The pre-filter loses no match; `make bench` measures its speed with 10,000 subscriptions."""
    index = open_search_index(f"sqlite://{tmp_path}/search")
    try:
        docs = [(bundle.doc_id, bundle.document()) for bundle in generate_bundles(20, seed=3)]
        index.index_many(REPLICA, docs)
        organs = ["brain", "heart", "pancreas", "liver", "lung", "kidney", "blood", "bone marrow"]
        for number in range(2000):
            query = {"bool": {"must": [
                {"term": {"files.specimen_from_organism_json.organ.text": organs[number % len(organs)]}},
                {"range": {"files.donor_organism_json.age_in_years": {"gte": number % 90}}}]}}
            index.add_subscription_query(REPLICA, f"s{number}", {"query": query})
        index.percolate(REPLICA, docs[0][1])  # warm up
        for _, doc in docs:
            matched = index.percolate(REPLICA, doc)
            organ = doc["files"]["specimen_from_organism_json"][0]["organ"]["text"]
            age = doc["files"]["donor_organism_json"][0]["age_in_years"]
            assert len(matched) == sum(1 for n in range(2000) if organs[n % len(organs)] == organ and age >= n % 90)
    finally:
        index.close()
