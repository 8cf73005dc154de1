"""ExpressionSet against the reference: every expression must match exactly when `jmespath.search` is truthy."""
from __future__ import annotations

import itertools
from typing import Any

import jmespath
import pytest

from dss.subscriptions.matching import ExpressionSet, is_truthy

DOCUMENTS: list[Any] = [
    {
        "uuid": "b1", "state": "new",
        "manifest": {"version": "2024-01-01T000000.000000Z",
                     "files": [{"name": "project_0.json", "size": 10, "indexed": True},
                               {"name": "reads.fastq", "size": 1000, "indexed": False}]},
        "files": {
            "project_json": [{"project_core": {"project_short_name": "abc", "title": "Brains"},
                              "contributors": [{"name": "x", "lab": "L1"}, {"name": "y"}]}],
            "sample_json": [{"organ": {"text": "brain"}, "age": 30, "alive": True, "score": 0},
                            {"organ": {"text": "heart"}, "age": 1.5, "alive": False, "score": 1},
                            {"organ": {"text": "brain"}, "age": None, "tags": []}],
            "empty_json": [{}],
        },
        "counts": {"a": 1, "b": 0, "c": True, "d": False, "e": "", "f": [], "g": {}, "h": None, "i": 1.0},
    },
    {"uuid": "b2", "state": "new", "manifest": {"version": "v2", "files": []},
     "files": {"project_json": [{"project_core": {"project_short_name": "other"}}]}},
    {"email": "admin@example.org", "reason": "oops", "admin_deleted": True, "uuid": "b3",
     "manifest": {"version": None}},
    {},
]

EXPRESSIONS = [
    # plain paths and truthiness of what they reach
    "uuid", "state", "manifest", "manifest.files", "files.empty_json[0]", "counts.a", "counts.b", "counts.c",
    "counts.d", "counts.e", "counts.f", "counts.g", "counts.h", "missing", "missing.deeper", "manifest.version",
    # equality, including JMESPath's 0/1-versus-boolean rule and numbers of different types
    "files.project_json[0].project_core.project_short_name == 'abc'",
    "files.project_json[0].project_core.project_short_name == 'other'",
    "'abc' == files.project_json[0].project_core.project_short_name",
    "files.project_json[0].project_core.project_short_name != 'abc'",
    "counts.a == `1`", "counts.a == `true`", "counts.c == `1`", "counts.c == `true`", "counts.b == `false`",
    "counts.d == `0`", "counts.i == `1`", "counts.a == `1.0`", "counts.h == `null`", "missing == `null`",
    "counts.f == `[]`", "counts.g == `{}`", "manifest.version == `null`", "counts.e == ''",
    "counts.a != `true`", "admin_deleted == `true`", "uuid == 'b3' && admin_deleted",
    # ordering: numbers and strings only, anything else compares to null
    "counts.a > `0`", "counts.a >= `1`", "counts.c > `0`", "uuid > 'b1'", "uuid <= 'b1'", "counts.h < `1`",
    "files.sample_json[0].age > `18`", "manifest.files[0].size < manifest.files[1].size",
    # boolean operators and their JMESPath truth
    "counts.b || counts.a", "counts.e || 'fallback'", "counts.a && counts.b", "counts.f && counts.a",
    "!counts.b", "!counts.a", "!counts.e", "!missing", "!counts.f", "!`0`",
    "state == 'new' && files.project_json[0].project_core.project_short_name == 'abc'",
    "files.project_json[0].project_core.project_short_name == 'abc' && state == 'gone'",
    "state == 'new' && missing.x == 'y'", "missing.x == 'y' && state == 'new'",
    "state == 'new' || missing.x == 'y'", "(state == 'new') && (uuid == 'b1' || uuid == 'b2')",
    # projections, filters, flattening, multi-select
    "files.sample_json[*].organ.text", "files.sample_json[?organ.text == 'brain']",
    "files.sample_json[?organ.text == 'lung']", "files.sample_json[?alive]", "files.sample_json[?age > `18`].age",
    "files.sample_json[].tags[]", "files.*[].organ.text", "files.*", "counts.*", "manifest.files[?indexed].name",
    "length(files.sample_json[?organ.text=='brain']) > `1`", "files.sample_json[?organ.text=='brain'] | length(@)",
    "files.project_json[0].contributors[?lab].name | [0]", "[uuid, state]", "{u: uuid, s: state}",
    "missing[*]", "missing[?x]", "uuid[0]", "manifest.files[-1].name", "manifest.files[5]",
    "manifest.files[0:1]", "manifest.files[::-1].name",
    # functions, including expression references (left to the reference interpreter) and type errors
    "contains(files.sample_json[].organ.text, 'heart')", "contains(files.sample_json[].organ.text, 'lung')",
    "starts_with(uuid, 'b')", "length(manifest.files) == `2`", "max_by(files.sample_json[?age], &age).organ.text",
    "sort_by(files.sample_json[?age], &age)[0].age", "keys(counts)", "to_number('12') == `12`", "length(`5`)",
    "sum(files.sample_json[?age].age) > `30`", "not_null(missing, uuid)", "type(counts.c) == 'boolean'",
    "abs(counts.a)", "join(', ', files.sample_json[].organ.text)", "merge(counts, `{\"a\": 2}`).a == `2`",
    "avg(`[]`)", "reverse(uuid)", "map(&organ.text, files.sample_json)", "ends_with(missing, 'x')",
    # pipes and the current node
    "files | project_json | [0] | project_core.title", "@.uuid", "uuid | @ == 'b1'", "`{\"a\": [1]}`.a[0] == `1`",
]


def _reference(expression: str, document: Any) -> bool:
    try:
        return is_truthy(jmespath.search(expression, document))
    except Exception:  # noqa: BLE001 - an error means no match
        return False


@pytest.mark.parametrize("index", range(len(DOCUMENTS)))
def test_matches_exactly_when_jmespath_search_is_truthy(index: int) -> None:
    document = DOCUMENTS[index]
    expressions = ExpressionSet((e, e) for e in EXPRESSIONS)
    expected = sorted(e for e in EXPRESSIONS if _reference(e, document))
    assert sorted(str(k) for k in expressions.matching(document)) == expected


def test_each_expression_alone_agrees_with_the_reference() -> None:
    # Alone, nothing is shared or memoised: checks the compiled closures without the memo.
    for expression, document in itertools.product(EXPRESSIONS, DOCUMENTS):
        assert bool(ExpressionSet([(1, expression)]).matching(document)) == _reference(expression, document), \
            expression


@pytest.mark.parametrize("operator", ["&&", "||"])
def test_combinations_agree_with_the_reference(operator: str) -> None:
    # Pairs exercise the guard index (a `path == literal` on either side of &&), errors on one side, and
    # many expressions sharing sub-expressions at once.
    combined = [f"({a}) {operator} ({b})" for a, b in itertools.product(EXPRESSIONS[::3], EXPRESSIONS[1::4])]
    expressions = ExpressionSet((e, e) for e in combined)
    for document in DOCUMENTS:
        expected = sorted(e for e in combined if _reference(e, document))
        assert sorted(str(k) for k in expressions.matching(document)) == expected


def test_keys_sharing_an_expression_all_match() -> None:
    expressions = ExpressionSet([("a", "uuid == 'b1'"), ("b", "uuid == 'b1'"), ("c", "uuid == 'b2'"), ("d", "uuid")])
    assert sorted(map(str, expressions.matching(DOCUMENTS[0]))) == ["a", "b", "d"]
    assert len(expressions) == 4


def test_evaluation_does_not_change_the_document_or_the_parser_cache() -> None:
    import copy

    document = copy.deepcopy(DOCUMENTS[0])
    parsed_before = copy.deepcopy(jmespath.compile("files.sample_json[?organ.text == 'brain']").parsed)
    ExpressionSet((e, e) for e in EXPRESSIONS).matching(document)
    assert document == DOCUMENTS[0]
    assert jmespath.compile("files.sample_json[?organ.text == 'brain']").parsed == parsed_before


def test_a_parse_cache_is_filled_and_reused() -> None:
    cache: dict[str, Any] = {}
    ExpressionSet([(1, "uuid == 'b1'")], parsed=cache)
    assert list(cache) == ["uuid == 'b1'"]
    cache["uuid == 'b1'"] = jmespath.compile("uuid == 'b2'").parsed  # proves the cache is what gets used
    assert ExpressionSet([(1, "uuid == 'b1'")], parsed=cache).matching({"uuid": "b2"}) == [1]


@pytest.mark.parametrize("template", [
    "files.project_json[0].project_core.project_short_name == 'project-{i}'",
    "state == 'new' && files.project_json[0].project_core.project_short_name == 'project-{i}'",
    "files.project_json[0].project_core.project_short_name == 'project-{i}' || uuid == 'b{i}'",
    "contains(files.sample_json[].organ.text, 'organ-{i}')",
])
def test_thousands_of_subscriptions_match_one_bundle(template: str) -> None:
    """Exactly the one subscription (of 2,000: the naive evaluation that checks it is the slow part); how fast
    10,000 are matched is measured by `make bench` (bench_search.py)."""
    expressions = ExpressionSet((i, template.format(i=i)) for i in range(2_000))
    document = dict(DOCUMENTS[0])
    document["files"] = dict(document["files"],
                             project_json=[{"project_core": {"project_short_name": "project-42"}}],
                             sample_json=[{"organ": {"text": "organ-42"}}, {"organ": {"text": "brain"}}])
    expected = [i for i in range(2_000) if jmespath.search(template.format(i=i), document)]
    assert 42 in expected and sorted(expressions.matching(document)) == expected
