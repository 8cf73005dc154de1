"""Leaf queries on one field, resolved against the mapping the way Elasticsearch 7.10 does it.

Term-level queries (`term`, `terms`, `range`, `prefix`, `wildcard`) normalise their value on a
lower-casing keyword field, exactly like the indexed terms; on a `.text` sub-field `term`, `range`,
`prefix` and `wildcard` take the value as given (so `Brain` never matches a lower-cased token), as
OpenSearch 2.19 does; only a `query_string` wildcard is lower-cased there. Full-text queries
(`match`, `match_phrase`) analyse their text with the field's own analyser: on a keyword field that
is the normaliser, so the whole value is one term; on `.text` it is the standard analyser. On
numeric, date and boolean fields both kinds become exact-value queries, and a date given without
some parts covers the whole period it names (ES `term` on dates is a range).
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from dss.index import analysis
from dss.index.backend import InvalidQuery, UnsupportedQuery
from dss.index.mapping import Field, FieldLookup, FieldType
from dss.index.query_ir import (
    MATCH_ALL,
    MATCH_NONE,
    Bool,
    Exists,
    Ids,
    Node,
    Phrase,
    Prefix,
    Range,
    Terms,
    Wildcard,
    all_of,
    any_of,
    minimum_should_match,
)

__all__ = ["FieldQueries", "current_millis"]

_WILDCARD_CHUNKS = re.compile(r"(\\.)|([?*]+)", re.DOTALL)
# Elasticsearch's own fields (`_id` is handled where it is supported: term, terms, ids, exists).
_METADATA_FIELDS = frozenset({"_id", "_index", "_type", "_routing", "_source", "_seq_no", "_primary_term",
                              "_version", "_score", "_field_names", "_ignored", "_size", "_uid", "_parent"})


def current_millis() -> int:
    return int(time.time() * 1000)


def _scalar(query: str, value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        raise InvalidQuery(f"[{query}] needs a string, number or boolean value, got {value!r}")
    return value


class FieldQueries:
    """Builds leaf nodes for named fields. `lenient` turns type errors into no-match (as ES does)."""

    def __init__(self, fields: FieldLookup, now: Callable[[], int] = current_millis) -> None:
        self.fields = fields
        self._now = now
        self.used_now = False

    def now(self) -> int:
        self.used_now = True
        return self._now()

    # --------------------------------------------------------------------------------- term level

    def term(self, name: str, value: Any, *, case_insensitive: bool = False, query: str = "term") -> Node:
        value = _scalar(query, value)
        if name == "_id":
            return Ids((str(analysis.keyword_text(value)),))
        field = self._resolve(name, query)
        if field is None or field.type is FieldType.OBJECT:
            return MATCH_NONE
        if field.type in (FieldType.KEYWORD, FieldType.RAW_KEYWORD, FieldType.TEXT):
            return self._string_term(field, str(analysis.keyword_text(value)), case_insensitive)
        return self._value_term(field, value, query)

    def _string_term(self, field: Field, text: str, case_insensitive: bool) -> Node:
        if field.type is FieldType.KEYWORD:
            return Terms("kw", field.base, (analysis.normalise_keyword(text),))
        if field.type is FieldType.TEXT:
            return Terms("tok", field.base, (text.lower() if case_insensitive else text,))
        return Terms("kw", field.base, (text,), case_insensitive)

    def _value_term(self, field: Field, value: Any, query: str) -> Node:
        try:
            if field.type is FieldType.LONG:
                number = analysis.parse_long(value)
                if number != int(number):
                    return MATCH_NONE  # a fraction never equals a long
                return Terms("num", field.name, (int(number),))
            if field.type is FieldType.FLOAT:
                return Terms("num", field.name, (analysis.parse_float(value),))
            if field.type is FieldType.BOOLEAN:
                return Terms("num", field.name, (int(analysis.parse_boolean(value)),))
            return self._date_range(field, value, value, True, True, None)
        except ValueError as error:
            raise InvalidQuery(f"[{query}] on field [{field.name}] of type [{field.type.value}]: {error}") from None

    def terms(self, name: str, values: Sequence[Any]) -> Node:
        if isinstance(values, dict):
            raise UnsupportedQuery("[terms] lookup (terms from another document) is not supported")
        if not isinstance(values, list):
            raise InvalidQuery(f"[terms] query on [{name}] needs an array of values")
        return any_of(self.term(name, value, query="terms") for value in values)

    def range(self, name: str, lower: Any, upper: Any, include_lower: bool, include_upper: bool,
              time_zone: str | None = None) -> Node:
        field = self._resolve(name, "range")
        if field is None or field.type is FieldType.OBJECT:
            return MATCH_NONE
        if time_zone is not None and field.type is not FieldType.DATE:
            raise InvalidQuery(f"[range] time_zone can not be applied to non date field [{name}]")
        try:
            if field.type is FieldType.DATE:
                return self._date_range(field, lower, upper, include_lower, include_upper, time_zone)
            convert = self._range_converter(field)
            lower_value = None if lower is None else convert(_scalar("range", lower))
            upper_value = None if upper is None else convert(_scalar("range", upper))
        except ValueError as error:
            raise InvalidQuery(f"[range] on field [{name}] of type [{field.type.value}]: {error}") from None
        return Range(field.space, field.base, lower_value, upper_value, include_lower, include_upper)

    def _range_converter(self, field: Field) -> Callable[[Any], Any]:
        if field.type is FieldType.KEYWORD:
            return lambda value: analysis.normalise_keyword(str(analysis.keyword_text(value)))
        if field.type in (FieldType.RAW_KEYWORD, FieldType.TEXT):
            return lambda value: str(analysis.keyword_text(value))
        if field.type is FieldType.LONG:
            return analysis.parse_long
        if field.type is FieldType.FLOAT:
            return analysis.parse_float
        return lambda value: int(analysis.parse_boolean(value))

    def _date_range(self, field: Field, lower: Any, upper: Any, include_lower: bool, include_upper: bool,
                    time_zone: str | None) -> Node:
        zone = analysis.parse_time_zone(time_zone)

        def parse(value: Any, round_up: bool) -> int | None:
            if value is None:
                return None
            text = analysis.keyword_text(_scalar("range", value))
            if text is None or isinstance(value, bool):
                raise analysis.DateError(f"failed to parse date field [{value}]")
            return analysis.parse_date_math(text, round_up=round_up, zone=zone, now=self.now)

        # Bounds that leave parts out round outwards for gt/lte and inwards for gte/lt, as in ES.
        return Range("num", field.name, parse(lower, not include_lower), parse(upper, include_upper),
                     include_lower, include_upper)

    def prefix(self, name: str, value: Any, *, case_insensitive: bool = False) -> Node:
        text = str(analysis.keyword_text(_scalar("prefix", value)))
        field = self._string_field(name, "prefix")
        if field is None:
            return MATCH_NONE
        if field.type is FieldType.KEYWORD:
            return Prefix("kw", field.base, analysis.normalise_keyword(text))
        return Prefix(field.space, field.base, text, case_insensitive)

    def wildcard(self, name: str, pattern: Any, *, case_insensitive: bool = False,
                 normalise_text: bool = False) -> Node:
        """`normalise_text`: lower-case the pattern on a `.text` field too (query_string does, the
        `wildcard` query does not)."""
        text = str(analysis.keyword_text(_scalar("wildcard", pattern)))
        field = self._string_field(name, "wildcard")
        if field is None:
            return MATCH_NONE
        if field.type is FieldType.KEYWORD or (field.type is FieldType.TEXT and normalise_text):
            return Wildcard(field.space, field.base, _normalise_pattern(text))
        if field.type is FieldType.TEXT:
            return Wildcard(field.space, field.base, text, case_insensitive)
        return Wildcard("kw", field.base, text, case_insensitive)

    def _string_field(self, name: str, query: str) -> Field | None:
        field = self._resolve(name, query)
        if field is None or field.type is FieldType.OBJECT:
            return None
        if field.space == "num":
            raise InvalidQuery(f"Can only use {query} queries on keyword and text fields - not on [{name}] "
                               f"which is of type [{field.type.value}]")
        return field

    def exists(self, pattern: str) -> Node:
        if pattern == "_id":
            return MATCH_ALL
        names = self.fields.expand(pattern)
        return Exists(tuple(names)) if names else MATCH_NONE

    def _resolve(self, name: str, query: str) -> Field | None:
        if not isinstance(name, str) or not name:
            raise InvalidQuery(f"[{query}] needs a field name")
        if name in _METADATA_FIELDS:
            raise UnsupportedQuery(f"[{query}] on the metadata field [{name}] is not supported")
        return self.fields.resolve(name)

    # ---------------------------------------------------------------------------------- full text

    def _analysed(self, kind: str, name: str, text: Any, zero_terms: str,
                  lenient: bool) -> Node | tuple[Field, tuple[str, ...]]:
        """(field, tokens) of a full-text query, or its answer when there is nothing to analyse: an
        `_id`, a missing or non-text field (matched exactly, as Elasticsearch does), or no tokens."""
        text = _scalar(kind, text)
        if name == "_id":
            return self.term(name, text)
        field = self._resolve(name, kind)
        if field is None or field.type is FieldType.OBJECT:
            return MATCH_NONE
        if field.type is not FieldType.TEXT:
            return self._exact(field, text, lenient)
        tokens = analysis.tokenize(str(analysis.keyword_text(text)))
        if not tokens:
            return MATCH_ALL if zero_terms == "all" else MATCH_NONE
        return field, tokens

    def match(self, name: str, text: Any, *, operator: str = "or", minimum: Any = None,
              zero_terms: str = "none", lenient: bool = False) -> Node:
        analysed = self._analysed("match", name, text, zero_terms, lenient)
        if isinstance(analysed, Node):
            return analysed
        field, tokens = analysed
        clauses = [Terms("tok", field.base, (token,)) for token in tokens]
        if operator == "and":
            return all_of(clauses)
        if minimum is None:
            return any_of(clauses)
        return self.should(clauses, minimum)

    @staticmethod
    def should(clauses: Sequence[Node], minimum: Any) -> Node:
        try:
            required = minimum_should_match(len(clauses), minimum)
        except ValueError as error:
            raise InvalidQuery(f"invalid minimum_should_match {minimum!r}: {error}") from None
        if required > len(clauses):
            return MATCH_NONE
        return Bool(should=tuple(clauses), min_should=max(required, 1))

    def phrase(self, name: str, text: Any, *, slop: int = 0, zero_terms: str = "none", lenient: bool = False) -> Node:
        analysed = self._analysed("match_phrase", name, text, zero_terms, lenient)
        if isinstance(analysed, Node):
            return analysed
        field, tokens = analysed
        if len(tokens) == 1:
            return Terms("tok", field.base, (tokens[0],))
        return Phrase(field.base, tuple(tokens), slop)

    def _exact(self, field: Field, value: Any, lenient: bool) -> Node:
        """Full-text queries on non-text fields: one term, normalised like the field's values."""
        try:
            return self.term(field.name, value, query="match")
        except InvalidQuery:
            if lenient:
                return MATCH_NONE
            raise


def _normalise_pattern(pattern: str) -> str:
    """Lower-case a wildcard pattern except its wildcards and escaped characters (ES does the same)."""
    parts = []
    last = 0
    for match in _WILDCARD_CHUNKS.finditer(pattern):
        parts.append(analysis.normalise_keyword(pattern[last:match.start()]))
        parts.append(match.group())
        last = match.end()
    parts.append(analysis.normalise_keyword(pattern[last:]))
    return "".join(parts)
