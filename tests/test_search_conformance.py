"""The shared search suite: realistic queries over an HCA-like corpus, run against every backend.

Expected hits and their order come from `tests/fixtures/search/reference.py`, a naive evaluator
written apart from the engine; `query_string` cases give it an equivalent DSL query. A few cases also
pin the count by hand, as a check on the reference itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from dss.index import InvalidQuery, QueryError, SearchIndex, UnsupportedQuery
from tests.fixtures.hca_corpus import generate_bundles
from tests.fixtures.search.backends import BACKENDS, close_backend, is_embedded, open_backend
from tests.fixtures.search.reference import Reference

REPLICA = "aws"
CORPUS_SIZE = 300
DONOR = "files.donor_organism_json."
SPECIMEN = "files.specimen_from_organism_json."
CELLS = "files.cell_suspension_json."
LIBRARY = "files.library_preparation_protocol_json."
SEQUENCE = "files.sequence_file_json."
PROJECT = "files.project_json."


@dataclass(frozen=True)
class Case:
    name: str
    query: dict[str, Any]
    reference: dict[str, Any] | None = None  # an equivalent query the reference understands

    @property
    def expectation_query(self) -> dict[str, Any]:
        return self.reference or self.query


def q(query: dict[str, Any]) -> dict[str, Any]:
    return {"query": query}


def qs(text: str, **options: Any) -> dict[str, Any]:
    return {"query_string": {"query": text, **options}}


CASES = [
    Case("readme", {"bool": {"must": [
        {"match": {DONOR + "medical_history.smoking_history": "yes"}},
        {"match": {SPECIMEN + "organ.text": "brain"}},
        {"match": {DONOR + "biomaterial_core.ncbi_taxon_id": 9606}}]}}),
    Case("organ-match", {"match": {SPECIMEN + "organ.text": "pancreas"}}),
    Case("organ-term-uppercase", {"term": {SPECIMEN + "organ.text": "BRAIN"}}),
    Case("organ-token", {"match": {SPECIMEN + "organ.text.text": "bone"}}),
    Case("organ-phrase", {"match_phrase": {SPECIMEN + "organ.text.text": "bone marrow"}}),
    Case("organ-phrase-reversed", {"match_phrase": {SPECIMEN + "organ.text.text": "marrow bone"}}),
    Case("species-keyword", {"match": {DONOR + "genus_species.text": "Homo sapiens"}}),
    Case("species-keyword-partial", {"match": {DONOR + "genus_species.text": "sapiens"}}),
    Case("species-token", {"match": {DONOR + "genus_species.text.text": "MUSCULUS"}}),
    Case("taxon-term", {"term": {DONOR + "biomaterial_core.ncbi_taxon_id": 10090}}),
    Case("taxon-term-string", {"term": {SPECIMEN + "biomaterial_core.ncbi_taxon_id": "9606"}}),
    Case("organs-terms", {"terms": {SPECIMEN + "organ.text": ["heart", "Lung"]}}),
    Case("age-range", {"range": {DONOR + "age_in_years": {"gte": 18, "lt": 40}}}),
    Case("age-range-string-bound", {"range": {DONOR + "age_in_years": {"gte": "65"}}}),
    Case("age-term-string", {"term": {DONOR + "age_in_years": "42"}}),
    Case("cells-range", {"range": {CELLS + "total_estimated_cells": {"gt": 10000}}}),
    Case("cells-zero", {"term": {CELLS + "total_estimated_cells": 0}}),
    Case("bmi-range-float", {"range": {DONOR + "body_mass_index": {"lte": 25.5}}}),
    Case("submission-year", {"range": {DONOR + "provenance.submission_date": {"gte": "2018-01-01",
                                                                               "lt": "2019-01-01"}}}),
    Case("submission-after-day", {"range": {DONOR + "provenance.submission_date": {"gt": "2018-06-15"}}}),
    Case("submission-upto-day", {"range": {DONOR + "provenance.submission_date": {"lte": "2017-03-31"}}}),
    Case("collection-date-range", {"range": {SPECIMEN + "collection_date": {"gte": "2017-01-01",
                                                                            "lte": "2017-06-30"}}}),
    Case("update-month", {"range": {SPECIMEN + "provenance.update_date": {"gte": "2019-06", "lt": "2019-09"}}}),
    Case("medical-history-exists", {"exists": {"field": DONOR + "medical_history"}}),
    Case("medical-history-missing", {"bool": {"must_not": [{"exists": {"field": DONOR + "medical_history"}}]}}),
    Case("smoking-exists", {"exists": {"field": DONOR + "medical_history.smoking_history"}}),
    Case("smoking-pack-years", {"match": {DONOR + "medical_history.smoking_history.text": "pack"}}),
    Case("smoking-former-phrase", {"match_phrase": {DONOR + "medical_history.smoking_history.text": "former smoker"}}),
    Case("project-prefix", {"prefix": {PROJECT + "project_core.project_short_name": "BrainAtlas"}}),
    Case("organ-part-token-prefix", {"prefix": {SPECIMEN + "organ_parts.text.text": "cere"}}),
    Case("stage-wildcard", {"wildcard": {DONOR + "development_stage.text": "*ADULT*"}}),
    Case("file-name-wildcard", {"wildcard": {SEQUENCE + "file_core.file_name": "SRR*_2.fastq.gz"}}),
    Case("read-index", {"match": {SEQUENCE + "read_index": "read2"}}),
    Case("object-array-flattened", {"bool": {"must": [{"term": {SEQUENCE + "read_index": "index1"}},
                                                      {"term": {SEQUENCE + "read_length": 98}}]}}),
    Case("library-method", {"match": {LIBRARY + "library_construction_method.text": "10X v2 sequencing"}}),
    Case("library-tokens-and", {"match": {LIBRARY + "library_construction_method.text.text":
                                          {"query": "10x sequencing v3", "operator": "and"}}}),
    Case("library-tokens-msm", {"match": {LIBRARY + "library_construction_method.text.text":
                                          {"query": "10x v3 smart", "minimum_should_match": 2}}}),
    Case("library-phrase", {"match_phrase": {LIBRARY + "library_construction_method.text.text": "v3 sequencing"}}),
    Case("unindexed-file-name", {"term": {"manifest.files.name": "analysis_0.json"}}),
    Case("creator", {"term": {"manifest.creator_uid": 8009}}),
    Case("version-prefix", {"prefix": {"manifest.version": "2020-0"}}),
    Case("version-range", {"range": {"manifest.version": {"gte": "2019-06", "lt": "2020"}}}),
    Case("project-exists", {"exists": {"field": "files.project_json"}}),
    Case("project-missing", {"bool": {"must_not": {"exists": {"field": "files.project_json"}}}}),
    Case("cell-json-quirk", {"exists": {"field": "files.cell_json"}}),
    Case("description-token", {"match": {PROJECT + "project_core.project_description.text": "rare populations"}}),
    Case("description-too-long-for-keyword", {"exists": {"field": PROJECT + "project_core.project_description"}}),
    Case("description-text-exists", {"exists": {"field": PROJECT + "project_core.project_description.text"}}),
    Case("organism-age-keyword", {"term": {DONOR + "organism_age": "38"}}),
    Case("organism-age-string-range", {"range": {DONOR + "organism_age": {"gte": "5", "lt": "6"}}}),
    Case("multi-match", {"multi_match": {"query": "brain", "fields": [
        SPECIMEN + "organ.text", PROJECT + "project_core.project_title.text"]}}),
    Case("multi-match-pattern", {"multi_match": {"query": "heart", "fields": ["files.*.organ.text"]}}),
    Case("should-default", {"bool": {"should": [{"term": {SPECIMEN + "organ.text": "heart"}},
                                                {"term": {SPECIMEN + "organ.text": "lung"}}]}}),
    Case("should-msm-2", {"bool": {"minimum_should_match": 2, "should": [
        {"term": {DONOR + "sex": "female"}}, {"term": {DONOR + "is_living": "yes"}},
        {"range": {DONOR + "age_in_years": {"gte": 50}}}]}}),
    Case("should-optional-with-filter", {"bool": {"filter": [{"term": {SPECIMEN + "organ.text": "liver"}}],
                                                  "should": [{"term": {DONOR + "sex": "male"}}]}}),
    Case("must-not-both-sexes", {"bool": {"must_not": [{"term": {DONOR + "sex": "female"}},
                                                       {"term": {DONOR + "sex": "male"}}]}}),
    Case("nested-bool", {"bool": {"must": [{"bool": {"should": [{"match": {SPECIMEN + "organ.text": "kidney"}},
                                                                {"match": {SPECIMEN + "organ.text": "blood"}}]}}],
                                  "must_not": [{"term": {"files.donor_organism_json.diseases.text": "normal"}}]}}),
    Case("constant-score", {"constant_score": {"filter": {"term": {DONOR + "is_living": "no"}}}}),
    Case("dis-max", {"dis_max": {"queries": [{"term": {DONOR + "sex": "unknown"}},
                                             {"term": {CELLS + "total_estimated_cells": 64000}}]}}),
    Case("plate-id-normalised", {"term": {CELLS + "plate_based_sequencing.plate_id": "PLATE3"}}),
    Case("disease-token", {"match": {DONOR + "diseases.text.text": "diabetes"}}),
    Case("disease-ontologies", {"terms": {DONOR + "diseases.ontology": ["MONDO:0005148", "mondo:0004975"]}}),
    Case("disease-ontology-wildcard", {"wildcard": {DONOR + "diseases.ontology": "mondo:*"}}),
    Case("match-all", {"match_all": {}}),
    Case("bmi-term-float", {"term": {DONOR + "body_mass_index": 24.3}}),
    Case("manifest-name-token", {"match": {"manifest.files.name.text": "json"}}),
    Case("contributor-institution", {"term": {PROJECT + "contributors.institution": "embl-EBI"}}),
    Case("corresponding-contributor", {"term": {PROJECT + "contributors.corresponding_contributor": True}}),
    Case("unmapped-field", {"term": {DONOR + "no_such_field": "x"}}),
    Case("unmapped-negated", {"bool": {"must_not": [{"match": {DONOR + "no_such_field": "x"}}]}}),
    Case("qs-and", qs(f"{SPECIMEN}organ.text:heart AND {DONOR}sex:female"),
         {"bool": {"must": [{"match": {SPECIMEN + "organ.text": "heart"}}, {"match": {DONOR + "sex": "female"}}]}}),
    Case("qs-or", qs(f"{DONOR}sex:male OR {DONOR}sex:unknown"),
         {"terms": {DONOR + "sex": ["male", "unknown"]}}),
    Case("qs-not", qs(f"{SPECIMEN}organ.text:brain AND NOT {DONOR}sex:female"),
         {"bool": {"must": [{"match": {SPECIMEN + "organ.text": "brain"}}],
                   "must_not": [{"match": {DONOR + "sex": "female"}}]}}),
    Case("qs-phrase", qs(f'{DONOR}medical_history.smoking_history.text:"pack years"'),
         {"match_phrase": {DONOR + "medical_history.smoking_history.text": "pack years"}}),
    Case("qs-range", qs(f"{CELLS}total_estimated_cells:[1000 TO 12000]"),
         {"range": {CELLS + "total_estimated_cells": {"gte": 1000, "lte": 12000}}}),
    Case("qs-comparison", qs(f"{DONOR}age_in_years:>=65"), {"range": {DONOR + "age_in_years": {"gte": 65}}}),
    Case("qs-wildcard", qs(f"{SEQUENCE}file_core.file_name:*_3.fastq.gz"),
         {"wildcard": {SEQUENCE + "file_core.file_name": "*_3.fastq.gz"}}),
    Case("qs-exists", qs(f"_exists_:{DONOR}medical_history"), {"exists": {"field": DONOR + "medical_history"}}),
    Case("qs-default-field", qs("lung", default_field=SPECIMEN + "organ.text"),
         {"match": {SPECIMEN + "organ.text": "lung"}}),
    Case("qs-default-and", qs("single nucleus", default_field=LIBRARY + "nucleic_acid_source.text",
                              default_operator="AND"),
         {"match": {LIBRARY + "nucleic_acid_source.text": {"query": "single nucleus", "operator": "and"}}}),
    Case("qs-grouped-field", qs(f"{SPECIMEN}organ.text:(heart OR liver)"),
         {"terms": {SPECIMEN + "organ.text": ["heart", "liver"]}}),
]


@pytest.fixture(scope="module")
def bundles() -> list[Any]:
    return generate_bundles(CORPUS_SIZE, seed=7)


@pytest.fixture(scope="module")
def documents(bundles: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(bundle.doc_id, bundle.document()) for bundle in bundles]


@pytest.fixture(scope="module")
def reference(documents: list[tuple[str, dict[str, Any]]]) -> Reference:
    return Reference(documents)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            documents: list[tuple[str, dict[str, Any]]]) -> Any:
    index = open_backend(request.param, tmp_path_factory.mktemp(request.param), request)
    for start in range(0, len(documents), 50):
        index.index_many(REPLICA, documents[start:start + 50])
    if request.param != "embedded-pending":
        index.refresh(REPLICA)
    yield request.param, index
    close_backend(index)


def _all_hits(index: SearchIndex, query: dict[str, Any], page_size: int = 500) -> tuple[int, list[str]]:
    ids: list[str] = []
    after = None
    total = None
    while True:
        page = index.search(REPLICA, query, size=page_size, search_after=after, source=False)
        total = page.total if total is None else total
        ids += [hit.id for hit in page.hits]
        if len(page.hits) < page_size:
            return total, ids
        after = page.hits[-1].sort


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)


def test_reference_agrees_with_hand_counts(reference: Reference, bundles: list[Any]) -> None:
    """Checks on the reference itself, counted straight from the generator's bundles."""
    human = [b for b in bundles if b.document()["files"]["donor_organism_json"][0]["biomaterial_core"]
             ["ncbi_taxon_id"] == [9606]]
    assert len(reference.search({"term": {DONOR + "biomaterial_core.ncbi_taxon_id": 9606}})) == len(human)
    with_project = [b for b in bundles if "project_json" in b.document()["files"]]
    assert len(reference.search({"exists": {"field": "files.project_json"}})) == len(with_project)
    assert reference.search({"match_all": {}})[0] == max(b.doc_id for b in bundles)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_query(backend: tuple[str, SearchIndex], reference: Reference, case: Case) -> None:
    _, index = backend
    expected = reference.search(case.expectation_query)
    total, ids = _all_hits(index, q(case.query))
    assert ids == expected
    assert total == len(expected)


def test_interesting_cases_are_not_vacuous(reference: Reference) -> None:
    """Cases meant to match something do, and cases meant to match nothing do not."""
    empty = {"unmapped-field", "description-too-long-for-keyword", "organ-phrase-reversed", "species-keyword-partial"}
    for case in CASES:
        hits = reference.search(case.expectation_query)
        assert bool(hits) != (case.name in empty), case.name


def test_pagination_with_search_after(backend: tuple[str, SearchIndex], reference: Reference) -> None:
    _, index = backend
    query = {"bool": {"should": [{"term": {SPECIMEN + "organ.text": "brain"}},
                                 {"range": {DONOR + "age_in_years": {"lt": 30}}}]}}
    expected = reference.search(query)
    total, ids = _all_hits(index, q(query), page_size=7)
    assert (total, ids) == (len(expected), expected)


def test_from_offsets_the_first_page(backend: tuple[str, SearchIndex], reference: Reference) -> None:
    _, index = backend
    expected = reference.search({"match_all": {}})
    page = index.search(REPLICA, {"query": {"match_all": {}}, "from": 5}, size=10, source=False)
    assert [hit.id for hit in page.hits] == expected[5:15]


def test_raw_hits_carry_filtered_source(backend: tuple[str, SearchIndex], documents: list[Any]) -> None:
    _, index = backend
    body = {"query": {"term": {SPECIMEN + "organ.text": "heart"}},
            "_source": {"includes": ["uuid", "files.specimen_from_organism_json.organ"], "excludes": ["*.ontology"]}}
    page = index.search(REPLICA, body, size=3, source=True)
    assert page.hits
    for hit in page.hits:
        assert hit.source == {"uuid": hit.id.split(".")[0], "files": {"specimen_from_organism_json": [
            {"organ": {"text": "heart", "ontology_label": "heart"}}]}}


def test_summary_hits_have_no_source(backend: tuple[str, SearchIndex]) -> None:
    _, index = backend
    page = index.search(REPLICA, {"query": {"match_all": {}}}, size=2, source=False)
    assert [hit.source for hit in page.hits] == [None, None]
    assert all(hit.score is None for hit in page.hits)


INVALID = [
    {"query": {"no_such_query": {}}},
    {"query": {"term": {"a": 1, "b": 2}}},
    {"query": {"bool": {"must": "not a query"}}},
    {"query": {"range": {DONOR + "age_in_years": {"gte": "abc"}}}},
    {"query": {"prefix": {DONOR + "age_in_years": "4"}}},
    {"query": {"match": {SPECIMEN + "organ.text": {"query": {"nested": "object"}}}}},
    {"query": {}},
    {"query": {"term": {SPECIMEN + "organ.text": "brain"}, "match_all": {}}},
]


@pytest.mark.parametrize("body", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_queries_are_rejected(backend: tuple[str, SearchIndex], body: dict[str, Any]) -> None:
    _, index = backend
    with pytest.raises(QueryError):
        index.search(REPLICA, body, size=10)


UNSUPPORTED = {
    "regexp": {"query": {"regexp": {SPECIMEN + "organ.text": "br.*"}}},
    "fuzzy": {"query": {"fuzzy": {SPECIMEN + "organ.text": "brian"}}},
    "nested": {"query": {"nested": {"path": "files", "query": {"match_all": {}}}}},
    "script": {"query": {"script": {"script": "true"}}},
    "fuzziness": {"query": {"match": {SPECIMEN + "organ.text": {"query": "brian", "fuzziness": "AUTO"}}}},
    "terms lookup": {"query": {"terms": {SPECIMEN + "organ.text": {"index": "x", "id": "1", "path": "p"}}}},
    "format": {"query": {"range": {DONOR + "provenance.submission_date": {"gte": "01/2018", "format": "MM/yyyy"}}}},
    "fuzzy term": {"query": {"query_string": {"query": "brian~"}}},
    "regular expression": {"query": {"query_string": {"query": "/br.*/"}}},
    "aggs": {"query": {"match_all": {}}, "aggs": {"organs": {"terms": {"field": SPECIMEN + "organ.text"}}}},
    "cross_fields": {"query": {"multi_match": {"query": "x", "fields": ["a"], "type": "cross_fields"}}},
    "match_phrase_prefix": {"query": {"match_phrase_prefix": {SPECIMEN + "organ.text.text": "bra"}}},
    "simple_query_string": {"query": {"simple_query_string": {"query": "brain"}}},
    "more_like_this": {"query": {"more_like_this": {"like": "brain"}}},
    "analyzer": {"query": {"match": {SPECIMEN + "organ.text.text": {"query": "x", "analyzer": "english"}}}},
}


@pytest.mark.parametrize("construct", list(UNSUPPORTED))
def test_unsupported_constructs_name_themselves(backend: tuple[str, SearchIndex], construct: str) -> None:
    name, index = backend
    if not is_embedded(name):
        # OpenSearch runs most of these; whatever it refuses must come back as a query error (a 400 in
        # the API), never as another failure (a 500 or 503)
        try:
            index.search(REPLICA, UNSUPPORTED[construct], size=10)
        except QueryError:
            pass
        return
    with pytest.raises(UnsupportedQuery) as raised:
        index.search(REPLICA, UNSUPPORTED[construct], size=10)
    assert construct.split()[0] in str(raised.value)


def test_subscription_queries_are_validated(backend: tuple[str, SearchIndex]) -> None:
    name, index = backend
    with pytest.raises(InvalidQuery):
        index.add_subscription_query(REPLICA, "bad", {"query": {"no_such_query": {}}})
    if is_embedded(name):
        with pytest.raises(UnsupportedQuery, match="regexp"):
            index.add_subscription_query(REPLICA, "bad", {"query": {"regexp": {"x": "y"}}})
