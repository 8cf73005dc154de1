"""The `query_string` query: Lucene's classic query syntax, combined the way Lucene combines it.

Supported syntax: terms, `field:term` (field names may use `*`), `"quoted phrases"` (with `~slop`),
`field:(grouped terms)`, `(sub queries)`, `AND`/`&&`, `OR`/`||`, `NOT`/`!`, `+`/`-`, wildcards and
prefixes (`bra*n`, `pan*`), `_exists_:field`, `field:*`, `*:*`, ranges (`[a TO b]`, `{a TO b}`, `*`
for open ends, `>10`, `<=2019-01-01`), `^boost` (ignored). Fuzzy terms (`term~`) and `/regexp/` raise
UnsupportedQuery.

Lucene does not give AND precedence over OR: each AND makes the clause before it required, and with
the default OR operator `a AND b OR c` means `+a +b c` (c is optional). That is kept, because it is
what the original service answered.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dss.index import analysis
from dss.index.backend import InvalidQuery, UnsupportedQuery
from dss.index.mapping import FieldType
from dss.index.query_ir import MATCH_ALL, MATCH_NONE, Bool, Node, Terms, all_of, any_of, minimum_should_match

if TYPE_CHECKING:
    from dss.index.query import QueryParser

__all__ = ["parse_query_string"]

_ALLOWED = {
    "query", "default_field", "fields", "default_operator", "lenient", "analyze_wildcard", "allow_leading_wildcard",
    "minimum_should_match", "boost", "_name", "phrase_slop", "auto_generate_synonyms_phrase_query",
    "enable_position_increments", "escape", "time_zone", "type", "tie_breaker", "rewrite", "max_determinized_states",
    "fuzziness", "fuzzy_max_expansions", "fuzzy_prefix_length", "fuzzy_transpositions", "fuzzy_rewrite",
}
_REFUSED = ("analyzer", "quote_analyzer", "quote_field_suffix")
_SPECIAL = set(' \t\n\r\u3000+-!():^[]"{}~\\/')
_TOKEN_SPLIT = re.compile(r"\\.|.", re.DOTALL)
MUST, SHOULD, MUST_NOT = "must", "should", "must_not"


@dataclass
class _Token:
    kind: str           # TERM QUOTED RANGE CMP AND OR NOT PLUS MINUS LPAREN RPAREN COLON CARAT TILDE
    text: str = ""
    raw: str = ""


def _scan(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(query):
        char = query[pos]
        if char.isspace():
            pos += 1
        elif query.startswith("&&", pos) or query.startswith("||", pos):
            tokens.append(_Token("AND" if char == "&" else "OR"))
            pos += 2
        elif char in "()!+-:":
            kind = {"(": "LPAREN", ")": "RPAREN", "!": "NOT", "+": "PLUS", "-": "MINUS", ":": "COLON"}[char]
            tokens.append(_Token(kind))
            pos += 1
        elif char in "^~":
            match = re.compile(r"[0-9.]*").match(query, pos + 1)
            assert match is not None
            tokens.append(_Token("CARAT" if char == "^" else "TILDE", match.group()))
            pos = match.end()
        elif char == '"':
            pos = _scan_quoted(query, pos, tokens)
        elif char in "[{":
            pos = _scan_range(query, pos, tokens)
        elif char == "/":
            raise UnsupportedQuery("[query_string] regular expressions (/…/) are not supported")
        elif char in "<>" and tokens and tokens[-1].kind == "COLON":
            op = query[pos:pos + 2] if query.startswith("=", pos + 1) else char
            tokens.append(_Token("CMP", op))
            pos += len(op)
        else:
            pos = _scan_term(query, pos, tokens)
    return tokens


def _scan_quoted(query: str, pos: int, tokens: list[_Token]) -> int:
    end = pos + 1
    while end < len(query) and query[end] != '"':
        end += 2 if query[end] == "\\" else 1
    if end >= len(query):
        raise InvalidQuery(f"[query_string] unterminated quote in [{query}]")
    tokens.append(_Token("QUOTED", _unescape(query[pos + 1:end])))
    return end + 1


def _scan_range(query: str, pos: int, tokens: list[_Token]) -> int:
    match = re.compile(r'[\[{]\s*("(?:\\.|[^"])*"|\S+)\s+TO\s+("(?:\\.|[^"])*"|[^\s\]}]+)\s*([\]}])').match(query, pos)
    if not match:
        raise InvalidQuery(f"[query_string] malformed range at [{query[pos:]}]")
    tokens.append(_Token("RANGE", match.group(0), query[pos] + match.group(3)))
    return match.end()


def _scan_term(query: str, pos: int, tokens: list[_Token]) -> int:
    end = pos
    while end < len(query):
        char = query[end]
        if char == "\\":
            end += 2
            continue
        if char in _SPECIAL and not (end > pos and char in "+-"):
            break
        end += 1
    if end > len(query):
        raise InvalidQuery("[query_string] the query ends with an escape character")
    raw = query[pos:end]
    kind = raw if raw in ("AND", "OR", "NOT") else "TERM"
    tokens.append(_Token(kind, _unescape(raw), raw))
    return end


def _unescape(text: str) -> str:
    return "".join(part[-1] for part in _TOKEN_SPLIT.findall(text))


def _has_wildcard(raw: str) -> bool:
    return any(part in ("*", "?") for part in _TOKEN_SPLIT.findall(raw))


def _range_bound(text: str) -> str | None:
    text = text.strip()
    if text == "*":
        return None
    return _unescape(text[1:-1]) if text.startswith('"') else _unescape(text)


class _Parser:
    def __init__(self, owner: QueryParser, tokens: list[_Token], default_fields: list[str], and_default: bool,
                 lenient: bool, phrase_slop: int, time_zone: str | None) -> None:
        self.owner = owner
        self.leaves = owner.leaves
        self.tokens = tokens
        self.pos = 0
        self.default_fields = default_fields
        self.and_default = and_default
        self.lenient = lenient
        self.phrase_slop = phrase_slop
        self.time_zone = time_zone

    def peek(self, offset: int = 0) -> _Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def next_is(self, *kinds: str) -> bool:
        token = self.peek()
        return token is not None and token.kind in kinds

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise InvalidQuery("[query_string] unexpected end of query")
        self.pos += 1
        return token

    # ------------------------------------------------------------------------------ structure

    def clauses(self, fields: list[str]) -> list[tuple[str, Node]]:
        clauses: list[tuple[str, Node]] = []
        while self.peek() is not None and not self.next_is("RPAREN"):
            conj = self.take().kind if self.next_is("AND", "OR") else None
            if conj and not clauses:
                raise InvalidQuery(f"[query_string] the query cannot start with {conj}")
            mod = self.take().kind if self.next_is("PLUS", "MINUS", "NOT") else None
            node = self.clause(fields)
            self._add(clauses, conj, mod, node)
        return clauses

    def _add(self, clauses: list[tuple[str, Node]], conj: str | None, mod: str | None, node: Node | None) -> None:
        """Lucene's QueryParserBase.addClause, occurrence rules included."""
        if clauses and conj == "AND" and clauses[-1][0] != MUST_NOT:
            clauses[-1] = (MUST, clauses[-1][1])
        if clauses and self.and_default and conj == "OR" and clauses[-1][0] != MUST_NOT:
            clauses[-1] = (SHOULD, clauses[-1][1])
        if node is None:
            return
        prohibited = mod in ("MINUS", "NOT")
        if self.and_default:
            required = not prohibited and conj != "OR"
        else:
            required = mod == "PLUS" or (conj == "AND" and not prohibited)
        clauses.append((MUST_NOT if prohibited else MUST if required else SHOULD, node))

    def clause(self, fields: list[str]) -> Node | None:
        token = self.peek()
        following = self.peek(1)
        if token is not None and token.kind == "TERM" and following is not None and following.kind == "COLON":
            self.pos += 2
            return self.field_clause(token, fields)
        return self.value(fields)

    def field_clause(self, token: _Token, fields: list[str]) -> Node | None:
        name = token.text
        if name == "_exists_":
            target = self.take()
            return self.leaves.exists(target.text)
        names = self.owner.fields.expand(name) if "*" in name else [name]
        following = self.peek()
        if following is not None and following.kind == "TERM" and following.raw == "*":
            self.take()
            self._skip_boost()
            if name == "*":
                return MATCH_ALL
            return any_of(self.leaves.exists(each) for each in names)  # `field:*` means it has a value
        return self.value(names)

    def value(self, fields: list[str]) -> Node | None:
        token = self.take()
        if token.kind == "LPAREN":
            node = self.group(fields)
        elif token.kind == "QUOTED":
            slop = self.phrase_slop
            if self.next_is("TILDE"):
                slop = int(float(self.take().text or 0))
            node = self.on_fields(fields, lambda name: self.leaves.phrase(name, token.text, slop=slop,
                                                                          lenient=self.lenient))
        elif token.kind == "RANGE":
            node = self.range(fields, token)
        elif token.kind == "CMP":
            node = self.comparison(fields, token.text, self.take())
        elif token.kind == "TERM":
            if self.next_is("TILDE"):
                raise UnsupportedQuery("[query_string] fuzzy terms (term~) are not supported")
            node = self.term(fields, token)
        else:
            raise InvalidQuery(f"[query_string] unexpected {token.kind} in the query")
        self._skip_boost()
        return node

    def _skip_boost(self) -> None:
        if self.next_is("CARAT"):
            self.take()

    def group(self, fields: list[str]) -> Node | None:
        clauses = self.clauses(fields)
        if self.take().kind != "RPAREN":
            raise InvalidQuery("[query_string] unbalanced parentheses")
        return combine(clauses)

    # --------------------------------------------------------------------------------- values

    def on_fields(self, fields: list[str], build: Callable[[str], Node | None]) -> Node | None:
        nodes = []
        for name in fields:
            try:
                node = build(name)
            except InvalidQuery:
                if not self.lenient:
                    raise
                node = MATCH_NONE
            if node is not None:
                nodes.append(node)
        return any_of(nodes) if nodes else None

    def term(self, fields: list[str], token: _Token) -> Node | None:
        if token.raw == "*":
            return MATCH_ALL
        if _has_wildcard(token.raw):
            return self.on_fields(fields, lambda name: self.wildcard(name, token.raw))
        return self.on_fields(fields, lambda name: self.text(name, token.text))

    def text(self, name: str, text: str) -> Node | None:
        field = self.owner.fields.resolve(name)
        if field is None or field.type is not FieldType.TEXT:
            return self.leaves.match(name, text, lenient=self.lenient)
        tokens = analysis.tokenize(text)
        if not tokens:
            return None
        clauses = tuple(Terms("tok", field.base, (token,)) for token in tokens)
        if len(clauses) == 1:
            return clauses[0]
        return Bool(must=clauses) if self.and_default else Bool(should=clauses, min_should=1)

    def wildcard(self, name: str, raw: str) -> Node:
        field = self.owner.fields.resolve(name)
        body = raw[:-1]
        if raw.endswith("*") and not _has_wildcard(body) and not body.endswith("\\"):
            # Lucene makes `pan*` a prefix query, normalised like the field's terms (text fields too).
            prefix = analysis.normalise_keyword(_unescape(body))
            if field is not None and field.type is FieldType.RAW_KEYWORD:
                prefix = _unescape(body)
            return self.leaves.prefix(name, prefix)
        return self.leaves.wildcard(name, raw, normalise_text=True)

    def range(self, fields: list[str], token: _Token) -> Node | None:
        match = re.match(r'[\[{]\s*("(?:\\.|[^"])*"|\S+)\s+TO\s+("(?:\\.|[^"])*"|[^\s\]}]+)\s*[\]}]', token.text)
        assert match is not None
        lower, upper = _range_bound(match.group(1)), _range_bound(match.group(2))
        include_lower, include_upper = token.raw[0] == "[", token.raw[1] == "]"
        return self.on_fields(fields, lambda name: self._range(name, lower, upper, include_lower, include_upper))

    def comparison(self, fields: list[str], op: str, value: _Token) -> Node | None:
        bound = value.text
        if op.startswith(">"):
            return self.on_fields(fields, lambda name: self._range(name, bound, None, op == ">=", True))
        return self.on_fields(fields, lambda name: self._range(name, None, bound, True, op == "<="))

    def _range(self, name: str, lower: str | None, upper: str | None, include_lower: bool,
               include_upper: bool) -> Node:
        field = self.owner.fields.resolve(name)
        if field is not None and field.type is FieldType.TEXT:
            # query_string normalises range bounds with the field's analyser; for text that lower-cases
            lower = None if lower is None else lower.lower()
            upper = None if upper is None else upper.lower()
        time_zone = self.time_zone if field is not None and field.type is FieldType.DATE else None
        return self.leaves.range(name, lower, upper, include_lower, include_upper, time_zone)


def combine(clauses: list[tuple[str, Node]], minimum: Any = None) -> Node:
    """A boolean of Lucene clauses; a purely negative one matches everything else (as ES fixes it)."""
    if not clauses:
        return MATCH_NONE
    must = [node for occur, node in clauses if occur == MUST]
    should = [node for occur, node in clauses if occur == SHOULD]
    must_not = [node for occur, node in clauses if occur == MUST_NOT]
    required = 0 if must else 1
    if minimum is not None and should:
        try:
            computed = minimum_should_match(len(should), minimum)
        except ValueError as error:
            raise InvalidQuery(f"[query_string] invalid minimum_should_match {minimum!r}: {error}") from None
        required = computed if computed > 0 else required
    if not should:
        required = 0
    if required > len(should):
        return MATCH_NONE
    if not should and not must_not:
        return all_of(must)
    return Bool(tuple(must), tuple(should), tuple(must_not), required)


def _default_fields(owner: QueryParser, params: Any) -> tuple[list[str], bool]:
    fields = params.get("fields")
    if fields is None:
        default = params.get("default_field", "*")
        if not isinstance(default, str):
            raise InvalidQuery("[query_string] default_field must be a string")
        fields = None if default == "*" else [default]
    return owner.field_names(fields, params.get("lenient"))


def parse_query_string(owner: QueryParser, body: Any) -> Node:
    if not isinstance(body, dict):
        raise InvalidQuery("[query_string] query malformed, expected an object")
    for key in body:
        if key in _REFUSED and body[key] is not None:
            raise UnsupportedQuery(f"[query_string] option [{key}] is not supported")
        if key not in _ALLOWED and key not in _REFUSED:
            raise InvalidQuery(f"[query_string] query does not support [{key}]")
    text = body.get("query")
    if not isinstance(text, str):
        raise InvalidQuery("[query_string] must be provided with a [query]")
    operator = str(body.get("default_operator", "or")).lower()
    if operator not in ("or", "and"):
        raise InvalidQuery(f"[query_string] default_operator must be OR or AND, got {operator!r}")
    fields, lenient = _default_fields(owner, body)
    slop = body.get("phrase_slop", 0)
    parser = _Parser(owner, _scan(text), fields, operator == "and", lenient,
                     slop if isinstance(slop, int) else 0, body.get("time_zone"))
    clauses = parser.clauses(fields)
    if parser.peek() is not None:
        raise InvalidQuery("[query_string] unbalanced parentheses")
    minimum = body.get("minimum_should_match")
    if len(clauses) == 1 and clauses[0][0] != MUST_NOT:
        # Lucene returns a lone clause itself; minimum_should_match then applies only to a term that
        # the analyser split into several optional tokens.
        inner = clauses[0][1]
        if minimum is not None and isinstance(inner, Bool) and inner.should and not inner.must and not inner.must_not:
            return combine([(SHOULD, node) for node in inner.should], minimum)
        return inner
    return combine(clauses, minimum)
