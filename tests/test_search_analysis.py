"""Units of the embedded engine: analysis, dates, query parsing rules, error messages."""
from __future__ import annotations

from typing import Any

import pytest

from dss.index import InvalidQuery, UnsupportedQuery
from dss.index.analysis import DateError, looks_like_date, parse_date, parse_date_math, parse_time_zone, tokenize
from dss.index.mapping import FieldMap, FieldType, analyse
from dss.index.matcher import phrase_matches
from dss.index.query import QueryParser, parse_search_body
from dss.index.query_ir import MATCH_ALL, MATCH_NONE, Bool, Terms, minimum_should_match
from dss.index.source_filter import SourceFilter


@pytest.mark.parametrize("text,tokens", [
    ("Homo sapiens", ["homo", "sapiens"]),
    ("20 pack years", ["20", "pack", "years"]),
    ("Former smoker, quit 2010", ["former", "smoker", "quit", "2010"]),
    ("f2686baa-971c-402d", ["f2686baa", "971c", "402d"]),
    ("donor_organism_0.json", ["donor_organism_0", "json"]),
    ("R1.fastq.gz", ["r1", "fastq.gz"]),
    ("3.14 and 1,000", ["3.14", "and", "1,000"]),
    ("U.S.A. don't", ["u.s.a", "don't"]),
    ("a.b@example.org", ["a.b", "example.org"]),
    ("10:30 vs a:b", ["10", "30", "vs", "a:b"]),
    ("__ _x_", ["_x_"]),
    ("", []),
])
def test_standard_tokenizer(text: str, tokens: list[str]) -> None:
    assert list(tokenize(text)) == tokens


def test_long_tokens_are_split() -> None:
    assert [len(token) for token in tokenize("a" * 300)] == [255, 45]


@pytest.mark.parametrize("text,is_date", [
    ("2019-05-15T10:00:00.000Z", True), ("2019-05-15", True), ("2019-05", True), ("2019-05-15T10", True),
    ("2019-05-15T100000.000000Z", False),  # a DSS version
    ("2019", False), ("38", False), ("40-45", False), ("2019-13-01", False), ("brain", False),
])
def test_date_detection(text: str, is_date: bool) -> None:
    assert looks_like_date(text) is is_date


def test_date_rounding_of_missing_parts() -> None:
    assert parse_date("2019-05-15") == parse_date("2019-05-15T00:00:00.000Z")
    assert parse_date("2019-05-15", round_up=True) == parse_date("2019-05-15T23:59:59.999Z")
    assert parse_date("2019-05", round_up=True) == parse_date("2019-05-01T23:59:59.999Z")  # as ES does
    assert parse_date("2019-05-15T10:00:00+02:00") == parse_date("2019-05-15T08:00:00Z")
    assert parse_date("2019-05-15", zone=parse_time_zone("-01:00")) == parse_date("2019-05-15T01:00:00Z")
    with pytest.raises(DateError):
        parse_date("15/05/2019")


def test_date_math() -> None:
    now = parse_date("2020-03-31T15:20:00Z")
    utc = parse_time_zone(None)

    def at(text: str, round_up: bool = False) -> int:
        return parse_date_math(text, round_up=round_up, zone=utc, now=lambda: now)
    assert at("now") == now
    assert at("now-1M") == parse_date("2020-02-29T15:20:00Z")
    assert at("now/d") == parse_date("2020-03-31")
    assert at("now/d", round_up=True) == parse_date("2020-03-31T23:59:59.999Z")
    assert at("now-1y/y") == parse_date("2019-01-01")
    assert at("2019-01-31||+1M/M") == parse_date("2019-02-01")
    assert at("now/w") == parse_date("2020-03-30")  # weeks start on Monday
    with pytest.raises(DateError):
        at("now+1x")


@pytest.mark.parametrize("clauses,spec,required", [
    (3, 2, 2), (3, -1, 2), (4, "75%", 3), (4, "-25%", 3), (10, "70%", 7), (3, "2<-25% 9<-3", 3),
    (5, "2<-25% 9<-3", 4), (12, "2<-25% 9<-3", 9), (3, "-5", 0),
])
def test_minimum_should_match(clauses: int, spec: Any, required: int) -> None:
    assert minimum_should_match(clauses, spec) == required


def test_dynamic_types_and_coercion() -> None:
    fields = FieldMap()
    first = analyse({"n": 1, "f": 1.5, "b": True, "s": "x", "d": "2019-01-01", "o": {"k": "v"}, "z": None}, fields)
    assert first.new_types == {"n": FieldType.LONG, "f": FieldType.FLOAT, "b": FieldType.BOOLEAN,
                               "s": FieldType.KEYWORD, "d": FieldType.DATE, "o": FieldType.OBJECT,
                               "o.k": FieldType.KEYWORD}
    for name, field_type in first.new_types.items():
        fields.add(name, field_type)
    second = analyse({"n": "7.9", "f": "2", "b": "false", "s": 12, "d": "nope", "o": "flat"}, fields)
    assert second.numbers == {"n": {7}, "f": {2.0}, "b": {0}}
    assert second.keywords == {"s": {"12"}}
    assert "d" not in second.present and "o" not in second.present
    dotted = analyse({"a.b": {"c": 1}}, FieldMap())
    assert dotted.new_types["a"] is FieldType.OBJECT and "a.b.c" in dotted.numbers


def test_phrase_matching() -> None:
    assert phrase_matches([[0], [1]], 0)
    assert not phrase_matches([[1], [0]], 0)
    assert not phrase_matches([[1], [0]], 1)
    assert phrase_matches([[1], [0]], 2)  # a transposition costs two moves
    assert phrase_matches([[0, 5], [7], [8]], 1)
    assert phrase_matches([[0, 1], [0, 1]], 0)  # "a a"


def _parse(query: dict[str, Any], fields: dict[str, FieldType] | None = None) -> Any:
    return QueryParser(FieldMap(fields or {"organ": FieldType.KEYWORD, "n": FieldType.LONG})).parse(query)


def test_bool_simplifies() -> None:
    assert _parse({"bool": {}}) is MATCH_ALL
    assert _parse({"bool": {"must": [{"match_all": {}}], "must_not": [{"match_all": {}}]}}) is MATCH_NONE
    assert _parse({"bool": {"should": [{"term": {"organ": "A"}}, {"term": {"organ": "b"}}]}}) == \
        Terms("kw", "organ", ("a", "b"))
    assert _parse({"bool": {"must_not": [{"match_all": {}}]}}) is MATCH_NONE
    assert _parse({"bool": {"must_not": [{"term": {"n": 1}}], "adjust_pure_negative": False}}) is MATCH_NONE
    assert isinstance(_parse({"bool": {"must_not": [{"term": {"n": 1}}]}}), Bool)


def test_query_string_follows_lucene_precedence() -> None:
    node = _parse({"query_string": {"query": "organ:a AND organ:b OR organ:c"}})
    assert node == Bool(must=(Terms("kw", "organ", ("a",)), Terms("kw", "organ", ("b",))),
                        should=(Terms("kw", "organ", ("c",)),), min_should=0)
    assert _parse({"query_string": {"query": "organ:a organ:b", "default_operator": "AND"}}) == \
        Bool(must=(Terms("kw", "organ", ("a",)), Terms("kw", "organ", ("b",))))
    assert _parse({"query_string": {"query": ""}}) is MATCH_NONE


@pytest.mark.parametrize("query,message", [
    ({"regexp": {"organ": "a.*"}}, "[regexp]"),
    ({"match": {"organ": {"query": "a", "fuzziness": 2}}}, "fuzziness"),
    ({"range": {"n": {"gte": 1, "relation": "within"}}}, "relation"),
    ({"query_string": {"query": "organ:brian~"}}, "fuzzy"),
    ({"query_string": {"query": "a", "analyzer": "english"}}, "analyzer"),
    ({"term": {"_index": "x"}}, "_index"),
])
def test_unsupported_constructs_are_named(query: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedQuery, match=message.replace("[", r"\[").replace("]", r"\]")):
        _parse(query)


@pytest.mark.parametrize("query,message", [
    ({"foo": {}}, "unknown query [foo]"),
    ({"term": {"n": "abc"}}, "[term]"),
    ({"prefix": {"n": "1"}}, "prefix"),
    ({"term": {"organ": "a", "n": 1}}, "exactly one field"),
    ({"bool": {"must": [{}]}}, "empty clause"),
    ({"query_string": {"query": "(unbalanced"}}, "end of query"),
    ({"match": {"organ": {"query": "a", "operator": "xor"}}}, "operator"),
])
def test_invalid_queries_say_why(query: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQuery) as raised:
        _parse(query)
    assert message in str(raised.value)


def test_search_body_keys() -> None:
    assert parse_search_body({"query": {"match_all": {}}, "size": 5, "sort": [], "track_total_hits": True})
    with pytest.raises(UnsupportedQuery, match="aggs"):
        parse_search_body({"aggs": {}})
    with pytest.raises(InvalidQuery, match="foo"):
        parse_search_body({"foo": 1})
    with pytest.raises(InvalidQuery):
        parse_search_body({"from": -1})


def test_source_filter() -> None:
    source = {"uuid": "u", "files": {"a_json": [{"x": 1, "y": {"z": 2}}, {"x": 3}], "b_json": [{"x": 4}]}}
    assert SourceFilter.parse(False).apply(source) is None
    assert SourceFilter.parse(True).apply(source) == source
    assert SourceFilter.parse("files.a_json.x").apply(source) == {"files": {"a_json": [{"x": 1}, {"x": 3}]}}
    assert SourceFilter.parse({"includes": ["files.*"], "excludes": ["*.y", "files.b_json"]}).apply(source) == \
        {"files": {"a_json": [{"x": 1}, {"x": 3}]}}
    assert SourceFilter.parse(["uuid", "nothing"]).apply(source) == {"uuid": "u"}
    with pytest.raises(InvalidQuery):
        SourceFilter.parse(3)
