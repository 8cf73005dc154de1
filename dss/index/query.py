"""Elasticsearch query DSL → resolved query nodes (`dss.index.query_ir`), for the embedded engine.

Supported: bool (must, filter, should + minimum_should_match, must_not, adjust_pure_negative),
constant_score, dis_max, boosting (its positive query; the negative one only changes scores), match,
match_phrase, multi_match (best_fields, most_fields, phrase), query_string, term, terms, range, exists,
prefix, wildcard, ids, match_all and match_none, on any dotted field path. Scores are never computed,
so boosts are accepted and ignored. Every other query, and every option that would change which
documents match (fuzziness, analyzers, terms lookup, …), raises UnsupportedQuery naming it; malformed
queries raise InvalidQuery with the message Elasticsearch would give, near enough.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dss.index.backend import InvalidQuery, UnsupportedQuery
from dss.index.mapping import FieldLookup
from dss.index.query_ir import MATCH_ALL, MATCH_NONE, Bool, Ids, Node, all_of, any_of, minimum_should_match
from dss.index.query_leaves import FieldQueries, current_millis
from dss.index.source_filter import SourceFilter

__all__ = ["QueryParser", "SearchRequest", "parse_search_body", "MAX_RESULT_WINDOW"]

MAX_RESULT_WINDOW = 10000

# Known Elasticsearch queries this engine does not implement: asking for one is an UnsupportedQuery,
# anything else unknown is an InvalidQuery (Elasticsearch says "unknown query").
_UNSUPPORTED_QUERIES = frozenset({
    "regexp", "fuzzy", "nested", "has_child", "has_parent", "parent_id", "geo_shape", "geo_bounding_box",
    "geo_distance", "geo_polygon", "shape", "script", "script_score", "function_score", "more_like_this",
    "percolate", "span_term", "span_multi", "span_first", "span_near", "span_or", "span_not",
    "span_containing", "span_within", "field_masking_span", "terms_set", "intervals", "distance_feature",
    "rank_feature", "wrapper", "pinned", "match_bool_prefix", "match_phrase_prefix", "simple_query_string",
    "combined_fields", "type", "common",
})
# Body keys that only decorate hits or tune execution: the answer (hits, order, total) is unchanged.
_IGNORED_BODY_KEYS = frozenset({
    "size", "sort", "search_after", "track_total_hits", "track_scores", "timeout", "explain", "version",
    "seq_no_primary_term", "profile", "stats", "highlight", "stored_fields", "docvalue_fields", "fields",
    "script_fields",
})
_UNSUPPORTED_BODY_KEYS = frozenset({
    "aggs", "aggregations", "suggest", "collapse", "rescore", "min_score", "terminate_after", "slice",
    "pit", "runtime_mappings", "indices_boost",
})
_META = frozenset({"boost", "_name"})


@dataclass(frozen=True)
class SearchRequest:
    query: Mapping[str, Any] | None
    post_filter: Mapping[str, Any] | None
    source: SourceFilter
    from_: int = 0


def parse_search_body(body: Mapping[str, Any]) -> SearchRequest:
    """Check a search body's top-level keys; the queries themselves are parsed per replica mapping."""
    if not isinstance(body, Mapping):
        raise InvalidQuery("the search body must be a JSON object")
    for key in body:
        if key in _UNSUPPORTED_BODY_KEYS:
            raise UnsupportedQuery(f"[{key}] is not supported in searches")
        if key not in _IGNORED_BODY_KEYS and key not in ("query", "post_filter", "_source", "from"):
            raise InvalidQuery(f"Unknown key for a START_OBJECT in [{key}].")
    from_ = body.get("from", 0)
    if isinstance(from_, bool) or not isinstance(from_, int) or from_ < 0:
        raise InvalidQuery(f"[from] parameter cannot be negative or non-integer, found [{from_}]")
    return SearchRequest(query=_object_or_none(body, "query"), post_filter=_object_or_none(body, "post_filter"),
                         source=SourceFilter.parse(body.get("_source", True)), from_=from_)


def _object_or_none(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise InvalidQuery(f"[{key}] must be an object")
    return value


def _clauses(kind: str, value: Any) -> list[Any]:
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return value
    raise InvalidQuery(f"[{kind}] clauses must be an object or an array of objects")


def _flag(kind: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidQuery(f"[{kind}] [{name}] must be true or false, got {value!r}")
    return value


def _choice(kind: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in choices:
        raise InvalidQuery(f"[{kind}] [{name}] must be one of {list(choices)}, got {value!r}")
    return text


class QueryParser:
    """Parses queries against one mapping. `used_now` tells whether a date used `now` (not cacheable)."""

    def __init__(self, fields: FieldLookup, now: Callable[[], int] = current_millis) -> None:
        self.fields = fields
        self.leaves = FieldQueries(fields, now)
        self._handlers: dict[str, Callable[[Any], Node]] = {
            "bool": self._bool, "constant_score": self._constant_score, "dis_max": self._dis_max,
            "boosting": self._boosting, "match_all": self._match_all, "match_none": self._match_none,
            "term": self._term, "terms": self._terms, "range": self._range, "exists": self._exists,
            "prefix": self._prefix, "wildcard": self._wildcard, "ids": self._ids, "match": self._match,
            "match_phrase": self._match_phrase, "multi_match": self._multi_match,
            "query_string": self._query_string,
        }

    @property
    def used_now(self) -> bool:
        return self.leaves.used_now

    def parse_request(self, request: SearchRequest) -> Node:
        query = MATCH_ALL if request.query is None else self.parse(request.query)
        if request.post_filter is not None:
            query = all_of([query, self.parse(request.post_filter)])
        return query

    def parse(self, query: Any) -> Node:
        if not isinstance(query, Mapping):
            raise InvalidQuery("[_na] query malformed, must start with start_object")
        if not query:
            raise InvalidQuery("query malformed, empty clause found")
        if len(query) > 1:
            names = list(query)
            raise InvalidQuery(f"[{names[0]}] malformed query, expected [END_OBJECT] but found [FIELD_NAME] "
                               f"[{names[1]}]")
        (name, body), = query.items()
        handler = self._handlers.get(name)
        if handler is None:
            if name in _UNSUPPORTED_QUERIES or name.startswith("geo_") or name.startswith("span_"):
                raise UnsupportedQuery(f"the [{name}] query is not supported")
            raise InvalidQuery(f"unknown query [{name}]")
        return handler(body)

    # ------------------------------------------------------------------------------- compounds

    def _bool(self, body: Any) -> Node:
        params = self._params("bool", body, {"must", "filter", "should", "must_not", "minimum_should_match",
                                             "adjust_pure_negative", "boost", "_name"})
        must = [self.parse(q) for key in ("must", "filter") for q in _clauses(key, params.get(key, []))]
        should = [self.parse(q) for q in _clauses("should", params.get("should", []))]
        must_not = [self.parse(q) for q in _clauses("must_not", params.get("must_not", []))]
        required = self._required_should(len(should), bool(must), params.get("minimum_should_match"))
        if not must and not should and must_not and not params.get("adjust_pure_negative", True):
            return MATCH_NONE
        return self._simplify(must, should, must_not, required)

    @staticmethod
    def _required_should(optional: int, has_must: bool, spec: Any) -> int:
        required = 0
        if spec is not None:
            try:
                required = minimum_should_match(optional, spec)
            except ValueError as error:
                raise InvalidQuery(f"[bool] invalid minimum_should_match {spec!r}: {error}") from None
        if required <= 0 and optional and not has_must:
            required = 1  # with nothing required, a document must match some should clause
        return required

    @staticmethod
    def _simplify(must: list[Node], should: list[Node], must_not: list[Node], required: int) -> Node:
        if required > len(should) or any(node is MATCH_ALL for node in must_not):
            return MATCH_NONE
        must_not = [node for node in must_not if node is not MATCH_NONE]
        if required == 0:
            should = []
        elif required == 1:
            must.append(any_of(should))
            should, required = [], 0
        if any(node is MATCH_NONE for node in must):
            return MATCH_NONE
        must = [node for node in must if node is not MATCH_ALL]
        if not must_not and not should:
            return all_of(must)
        return Bool(tuple(must), tuple(should), tuple(must_not), required)

    def _constant_score(self, body: Any) -> Node:
        params = self._params("constant_score", body, {"filter", "boost", "_name"})
        if "filter" not in params:
            raise InvalidQuery("[constant_score] requires a 'filter' element")
        return self.parse(params["filter"])

    def _dis_max(self, body: Any) -> Node:
        params = self._params("dis_max", body, {"queries", "tie_breaker", "boost", "_name"})
        queries = _clauses("dis_max", params.get("queries", []))
        if not queries:
            raise InvalidQuery("[dis_max] requires 'queries' field with at least one clause")
        return any_of(self.parse(q) for q in queries)

    def _boosting(self, body: Any) -> Node:
        params = self._params("boosting", body, {"positive", "negative", "negative_boost", "boost", "_name"})
        if "positive" not in params or "negative" not in params:
            raise InvalidQuery("[boosting] query requires 'positive' and 'negative' queries")
        self.parse(params["negative"])  # validated, but it only lowers scores
        return self.parse(params["positive"])

    def _match_all(self, body: Any) -> Node:
        self._params("match_all", body, set(_META))
        return MATCH_ALL

    def _match_none(self, body: Any) -> Node:
        self._params("match_none", body, set(_META))
        return MATCH_NONE

    # --------------------------------------------------------------------------------- leaves

    def _term(self, body: Any) -> Node:
        name, params = self._field_params("term", body, ("value",), {"value", "case_insensitive"})
        case_insensitive = _flag("term", "case_insensitive", params.get("case_insensitive", False))
        return self.leaves.term(name, params.get("value"), case_insensitive=case_insensitive)

    def _terms(self, body: Any) -> Node:
        if not isinstance(body, Mapping):
            raise InvalidQuery("[terms] query malformed, expected an object")
        fields = [key for key in body if key not in _META]
        if len(fields) != 1:
            raise InvalidQuery(f"[terms] query needs exactly one field, found {fields}")
        return self.leaves.terms(fields[0], body[fields[0]])

    def _ids(self, body: Any) -> Node:
        params = self._params("ids", body, {"values", "type", "boost", "_name"})
        values = params.get("values", [])
        if not isinstance(values, list):
            raise InvalidQuery("[ids] values must be an array")
        return Ids(tuple(str(value) for value in values)) if values else MATCH_NONE

    def _range(self, body: Any) -> Node:
        name, params = self._field_params("range", body, (), {
            "gt", "gte", "lt", "lte", "from", "to", "include_lower", "include_upper", "format", "time_zone",
            "relation"})
        if "format" in params:
            raise UnsupportedQuery("[range] format is not supported: write dates as strict_date_optional_time")
        if str(params.get("relation", "intersects")).lower() != "intersects":
            raise UnsupportedQuery(f"[range] relation [{params['relation']}] is not supported")
        lower, upper, include_lower, include_upper = None, None, True, True
        for key, value in params.items():  # later keys win, as in Elasticsearch
            if key == "from":
                lower = value
            elif key in ("gt", "gte"):
                lower, include_lower = value, key == "gte"
            elif key == "to":
                upper = value
            elif key in ("lt", "lte"):
                upper, include_upper = value, key == "lte"
            elif key == "include_lower":
                include_lower = _flag("range", key, value)
            elif key == "include_upper":
                include_upper = _flag("range", key, value)
        return self.leaves.range(name, lower, upper, include_lower, include_upper, params.get("time_zone"))

    def _exists(self, body: Any) -> Node:
        params = self._params("exists", body, {"field", "boost", "_name"})
        name = params.get("field")
        if not isinstance(name, str) or not name:
            raise InvalidQuery("[exists] must be provided with a [field]")
        return self.leaves.exists(name)

    def _prefix(self, body: Any) -> Node:
        name, params = self._field_params("prefix", body, ("value",), {"value", "rewrite", "case_insensitive"})
        case_insensitive = _flag("prefix", "case_insensitive", params.get("case_insensitive", False))
        return self.leaves.prefix(name, params.get("value"), case_insensitive=case_insensitive)

    def _wildcard(self, body: Any) -> Node:
        name, params = self._field_params("wildcard", body, ("value",),
                                          {"value", "wildcard", "rewrite", "case_insensitive"})
        case_insensitive = _flag("wildcard", "case_insensitive", params.get("case_insensitive", False))
        pattern = params.get("value", params.get("wildcard"))
        return self.leaves.wildcard(name, pattern, case_insensitive=case_insensitive)

    # ----------------------------------------------------------------------------- full text

    _MATCH_KEYS = {"query", "operator", "minimum_should_match", "zero_terms_query", "lenient", "analyzer",
                   "fuzziness", "prefix_length", "max_expansions", "fuzzy_transpositions", "fuzzy_rewrite",
                   "auto_generate_synonyms_phrase_query", "cutoff_frequency"}

    def _match(self, body: Any) -> Node:
        name, params = self._field_params("match", body, ("query",), self._MATCH_KEYS)
        self._refuse("match", params, ("analyzer", "fuzziness", "cutoff_frequency"))
        operator = _choice("match", "operator", params.get("operator", "or"), ("or", "and"))
        return self.leaves.match(
            name, params.get("query"), operator=operator,
            minimum=params.get("minimum_should_match"), zero_terms=self._zero_terms("match", params),
            lenient=_flag("match", "lenient", params.get("lenient", False)))

    def _match_phrase(self, body: Any) -> Node:
        name, params = self._field_params("match_phrase", body, ("query",),
                                          {"query", "slop", "analyzer", "zero_terms_query"})
        self._refuse("match_phrase", params, ("analyzer",))
        return self.leaves.phrase(name, params.get("query"), slop=self._slop("match_phrase", params.get("slop", 0)),
                                  zero_terms=self._zero_terms("match_phrase", params))

    def _multi_match(self, body: Any) -> Node:
        params = self._params("multi_match", body, self._MATCH_KEYS | {
            "fields", "type", "slop", "tie_breaker", "boost", "_name"})
        self._refuse("multi_match", params, ("analyzer", "fuzziness", "cutoff_frequency"))
        kind = str(params.get("type", "best_fields")).lower()
        if kind in ("cross_fields", "phrase_prefix", "bool_prefix"):
            raise UnsupportedQuery(f"[multi_match] of type [{kind}] is not supported")
        if kind not in ("best_fields", "most_fields", "phrase"):
            raise InvalidQuery(f"[multi_match] unknown type [{kind}]")
        if "query" not in params:
            raise InvalidQuery("No text specified for multi_match query")
        names, lenient = self._field_names(params.get("fields"), params.get("lenient"))
        zero_terms = self._zero_terms("multi_match", params)
        if kind == "phrase":
            slop = self._slop("multi_match", params.get("slop", 0))
            return any_of(self.leaves.phrase(name, params["query"], slop=slop, zero_terms=zero_terms,
                                             lenient=lenient) for name in names)
        operator = _choice("multi_match", "operator", params.get("operator", "or"), ("or", "and"))

        def match(name: str) -> Node:
            return self.leaves.match(name, params["query"], operator=operator,
                                     minimum=params.get("minimum_should_match"), zero_terms=zero_terms,
                                     lenient=lenient)
        return any_of(self._lenient(lenient, functools.partial(match, name)) for name in names)

    def _query_string(self, body: Any) -> Node:
        from dss.index.query_string import parse_query_string
        return parse_query_string(self, body)

    def field_names(self, fields: Any, lenient: Any) -> tuple[list[str], bool]:
        return self._field_names(fields, lenient)

    def _field_names(self, fields: Any, lenient: Any) -> tuple[list[str], bool]:
        """Expand a `fields` list (patterns, `^boost` suffixes); none means every field, leniently."""
        explicit_lenient = _flag("fields", "lenient", lenient) if lenient is not None else None
        if fields is None or fields == ["*"] or fields == "*":
            return self.fields.queryable_names(), explicit_lenient if explicit_lenient is not None else True
        if isinstance(fields, str):
            fields = [fields]
        if not isinstance(fields, list) or not all(isinstance(name, str) for name in fields):
            raise InvalidQuery("[fields] must be an array of field names")
        names: list[str] = []
        for pattern in fields:
            for name in self.fields.expand(pattern.split("^", 1)[0]) or []:
                if name not in names:
                    names.append(name)
        return names, bool(explicit_lenient)

    @staticmethod
    def _lenient(lenient: bool, build: Callable[[], Node]) -> Node:
        try:
            return build()
        except InvalidQuery:
            if lenient:
                return MATCH_NONE
            raise

    # ------------------------------------------------------------------------------- helpers

    @staticmethod
    def _zero_terms(kind: str, params: Mapping[str, Any]) -> str:
        return _choice(kind, "zero_terms_query", params.get("zero_terms_query", "none"), ("none", "all"))

    @staticmethod
    def _slop(kind: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidQuery(f"[{kind}] slop must be a non-negative integer, got {value!r}")
        return value

    @staticmethod
    def _refuse(kind: str, params: Mapping[str, Any], options: tuple[str, ...]) -> None:
        for option in options:
            if params.get(option) is not None:
                raise UnsupportedQuery(f"[{kind}] option [{option}] is not supported")

    @staticmethod
    def _params(kind: str, body: Any, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(body, Mapping):
            raise InvalidQuery(f"[{kind}] query malformed, expected an object")
        for key in body:
            if key not in allowed:
                raise InvalidQuery(f"[{kind}] query does not support [{key}]")
        return body

    @staticmethod
    def _field_params(kind: str, body: Any, value_keys: tuple[str, ...],
                      allowed: set[str]) -> tuple[str, Mapping[str, Any]]:
        """`{"field": value}` or `{"field": {options}}`, plus `boost`/`_name` beside the field."""
        if not isinstance(body, Mapping):
            raise InvalidQuery(f"[{kind}] query malformed, expected an object")
        found: list[tuple[str, Mapping[str, Any]]] = []
        for key, value in body.items():
            if key in _META and not isinstance(value, Mapping):
                continue
            if isinstance(value, Mapping):
                params = value
            elif value_keys:
                params = {value_keys[0]: value}
            else:
                raise InvalidQuery(f"[{kind}] query malformed, field [{key}] needs an object")
            found.append((key, params))
        if len(found) != 1:
            raise InvalidQuery(f"[{kind}] query needs exactly one field, found {[name for name, _ in found]}")
        name, params = found[0]
        for key in params:
            if key not in allowed and key not in _META:
                raise InvalidQuery(f"[{kind}] query does not support [{key}]")
        return name, params
