"""POST /v1/search through the real API: the index handler turns bundles into documents, queries page
with search_after, raw output, tombstones, and errors."""
from __future__ import annotations

import json
import re

import pytest
import requests

from dss.identifiers import new_version
from tests.infra.dss_server import ADMIN, start_server
from tests.infra.helpers import add_file, new_uuid, put_bundle
from tests.infra.opensearch import ALL_ENGINES

pytestmark = ALL_ENGINES  # every test here runs on the embedded engine and on real OpenSearch and Elasticsearch nodes

ORGANS = ["pancreas", "brain", "heart", "liver"]


def search(dss, es_query: dict, replica: str = "aws", **params) -> requests.Response:
    return requests.post(f"{dss.url}/v1/search", params={"replica": replica, **params}, json={"es_query": es_query})


def organ_query(organ: str) -> dict:
    return {"query": {"match": {"files.specimen_from_organism_json.organ.text": organ}}}


@pytest.fixture
def dss_env(dss_env, search_engine_env):
    """Every test runs twice: on the embedded engine and with a real OpenSearch node as the search."""
    return {**dss_env, **search_engine_env}


@pytest.fixture
def corpus(dss):
    """25 bundles, each with a specimen JSON (organ, cell count) and a non-indexed data file."""
    data = add_file(dss, b"ACGT" * 100, "reads.fastq")
    bundles = []
    for n in range(25):
        organ = ORGANS[n % len(ORGANS)]
        specimen = add_file(dss, json.dumps({"organ": {"text": organ}, "cells": n * 1000,
                                             "donor": {"smoking_history": "yes" if n % 3 == 0 else "no"}}).encode(),
                            "specimen_from_organism_0.json")
        bundle_uuid, version = new_uuid(), new_version()
        assert put_bundle(dss, [specimen, data], bundle_uuid, version).status_code == 201
        bundles.append({"uuid": bundle_uuid, "version": version, "organ": organ, "cells": n * 1000,
                        "smoker": n % 3 == 0})
    dss.runtime.workers.drain(timeout=60)
    return bundles


def _fqids(bundles) -> list[str]:
    return sorted((f"{b['uuid']}.{b['version']}" for b in bundles), reverse=True)


def test_match_query_finds_exactly_the_matching_bundles(dss, corpus):
    response = search(dss, organ_query("Brain"))
    assert response.status_code == 200
    body = response.json()
    expected = _fqids(b for b in corpus if b["organ"] == "brain")
    assert [r["bundle_fqid"] for r in body["results"]] == expected  # uuid desc: the forced sort
    assert body["total_hits"] == len(expected) and body["es_query"] == organ_query("Brain")
    first = body["results"][0]
    assert first["bundle_url"] == f"{dss.url}/v1/bundles/{first['bundle_fqid'].split('.', 1)[0]}?version=" \
                                  f"{first['bundle_fqid'].split('.', 1)[1]}&replica=aws"
    assert "metadata" not in first
    assert requests.get(first["bundle_url"]).status_code == 200


def test_bool_range_and_term_queries(dss, corpus):
    query = {"query": {"bool": {
        "must": [{"term": {"files.specimen_from_organism_json.donor.smoking_history": "yes"}}],
        "filter": [{"range": {"files.specimen_from_organism_json.cells": {"gte": 3000, "lt": 20000}}}],
        "must_not": [{"match": {"files.specimen_from_organism_json.organ.text": "heart"}}]}}}
    expected = _fqids(b for b in corpus if b["smoker"] and 3000 <= b["cells"] < 20000 and b["organ"] != "heart")
    assert [r["bundle_fqid"] for r in search(dss, query).json()["results"]] == expected


def test_pagination_with_search_after_and_the_same_body(dss, corpus):
    query = {"query": {"match_all": {}}}
    seen, response = [], search(dss, query, per_page=10)
    while True:
        seen += [r["bundle_fqid"] for r in response.json()["results"]]
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "results"
        if "next" not in response.links:
            assert response.status_code == 200
            break
        assert response.status_code == 206 and 'rel="next"' in response.headers["Link"]
        response = requests.post(response.links["next"]["url"], json={"es_query": query})
    assert seen == _fqids(corpus)


def test_raw_output_carries_documents_ten_at_a_time(dss, corpus):
    response = search(dss, {"query": {"match_all": {}}}, output_format="raw", per_page=500)
    results = response.json()["results"]
    assert response.status_code == 206 and len(results) == 10
    document = results[0]["metadata"]
    assert set(document) >= {"uuid", "manifest", "files", "state"}
    assert document["files"]["specimen_from_organism_json"][0]["organ"]["text"] in ORGANS
    assert [f["name"] for f in document["manifest"]["files"]] == ["specimen_from_organism_0.json", "reads.fastq"]


def test_tombstoned_bundles_stay_searchable_as_tombstones(dss, corpus):
    victim = next(b for b in corpus if b["organ"] == "liver")
    response = requests.delete(f"{dss.url}/v1/bundles/{victim['uuid']}", params={"replica": "aws"},
                               headers=dss.auth(ADMIN), json={"reason": "withdrawn"})
    assert response.status_code == 200
    dss.runtime.workers.drain(timeout=30)
    livers = [r["bundle_fqid"] for r in search(dss, organ_query("liver")).json()["results"]]
    assert f"{victim['uuid']}.{victim['version']}" not in livers
    tombstones = search(dss, {"query": {"term": {"admin_deleted": True}}}, output_format="raw").json()["results"]
    assert [r["bundle_fqid"] for r in tombstones] == [f"{victim['uuid']}.{victim['version']}"]
    assert tombstones[0]["metadata"]["reason"] == "withdrawn"


def test_replicated_bundles_are_searchable_on_the_other_replica(dss, corpus):
    assert search(dss, organ_query("brain"), replica="gcp").json()["results"] == [
        dict(r, bundle_url=r["bundle_url"].replace("replica=aws", "replica=gcp"))
        for r in search(dss, organ_query("brain")).json()["results"]]


def test_errors(dss, corpus):
    unsupported = search(dss, {"query": {"geo_distance": {"distance": "1km", "location": [0, 0]}}})
    assert unsupported.status_code == 400 and unsupported.json()["code"] == "elasticsearch_bad_request"
    # the embedded engine names the construct it lacks; the real engines run it and find no geo field
    assert re.search(r"geo_distance|geo field|geo_point field", unsupported.json()["title"])
    assert search(dss, {"query": {"match_all": {}}}, per_page=5).status_code == 400
    assert search(dss, {"query": {"match_all": {}}}, per_page=501).status_code == 400
    assert search(dss, {"query": {"match_all": {}}}, replica="azure").status_code == 400
    missing = requests.post(f"{dss.url}/v1/search", params={"replica": "aws"}, json={})
    assert missing.status_code == 400 and missing.json()["code"] == "illegal_arguments"
    bad_cursor = search(dss, {"query": {"match_all": {}}}, search_after="not a cursor")
    assert bad_cursor.status_code == 400


def test_bundles_over_the_manifest_limit_are_searchable_without_their_file_list(dss_env):
    server = start_server({**dss_env, "DSS_BUNDLE_MANIFEST_INDEX_LIMIT": "3"})
    try:
        specimen = add_file(server, json.dumps({"organ": {"text": "spleen"}}).encode(), "specimen_from_organism_0.json")
        reads = [add_file(server, b"ACGT%d" % n, f"reads_{n}.fastq") for n in range(4)]
        large, small = new_uuid(), new_uuid()
        assert put_bundle(server, [specimen, *reads], large, new_version()).status_code == 201
        assert put_bundle(server, [specimen, reads[0]], small, new_version()).status_code == 201
        server.runtime.workers.drain(timeout=60)
        results = search(server, organ_query("spleen"), output_format="raw").json()["results"]
        documents = {r["bundle_fqid"].split(".")[0]: r["metadata"] for r in results}
        assert set(documents) == {large, small}
        assert documents[large]["manifest"]["files"] == []  # five files: over the limit of three
        assert [f["name"] for f in documents[small]["manifest"]["files"]] == ["specimen_from_organism_0.json",
                                                                             "reads_0.fastq"]
        for document in documents.values():
            assert document["files"]["specimen_from_organism_json"] == [{"organ": {"text": "spleen"}}]
    finally:
        server.stop()


MALFORMED = {
    "unknown query": {"query": {"no_such_query": {}}},
    "two fields in a term": {"query": {"term": {"a": 1, "b": 2}}},
    "bool of a string": {"query": {"bool": {"must": "not a query"}}},
    "range of an object": {"query": {"range": {"files.specimen_from_organism_json.cells": {"gte": {"a": 1}}}}},
    "text range on a number": {"query": {"range": {"files.specimen_from_organism_json.cells": {"gte": "many"}}}},
    "prefix on a number": {"query": {"prefix": {"files.specimen_from_organism_json.cells": "4"}}},
    "empty query": {"query": {}},
    "two queries in one": {"query": {"match_all": {}, "term": {"uuid": "x"}}},
    "query of a list": {"query": [{"match_all": {}}]},
    "from past the window": {"query": {"match_all": {}}, "from": 100000},
    "negative from": {"query": {"match_all": {}}, "from": -5},
    "unknown body key": {"query": {"match_all": {}}, "no_such_key": 1},
    "terms lookup in a missing index": {"query": {"terms": {"uuid": {"index": "x", "id": "1", "path": "p"}}}},
    # what would read other indices of the cluster or run code there
    "terms lookup in a bool": {"query": {"bool": {"filter": [{"terms": {"uuid": {"index": "dss", "id": "1",
                                                                              "path": "uuid"}}}]}}},
    "a script": {"query": {"script": {"script": "true"}}},
    "a wrapped query": {"query": {"wrapper": {"query": "eyJtYXRjaF9hbGwiOnt9fQ=="}}},
    "more like another document": {"query": {"more_like_this": {"fields": ["uuid"],
                                                                "like": [{"_index": "x", "_id": "1"}]}}},
}


def test_malformed_queries_and_cursors_are_400_never_500(dss):
    specimen = add_file(dss, json.dumps({"cells": 5}).encode(), "specimen_from_organism_0.json")
    assert put_bundle(dss, [specimen], new_uuid(), new_version()).status_code == 201
    dss.runtime.workers.drain(timeout=60)
    for name, es_query in MALFORMED.items():
        response = search(dss, es_query)
        assert response.status_code == 400, (name, response.text)
        assert response.headers["Content-Type"] == "application/problem+json", name
        assert response.json()["code"] in ("elasticsearch_bad_request", "illegal_arguments"), (name, response.text)
    for cursor in ('["only-one-value"]', "[1, 2, 3]"):  # not the shape of the forced sort
        response = search(dss, {"query": {"match_all": {}}}, search_after=cursor)
        assert response.status_code == 400, (cursor, response.text)
