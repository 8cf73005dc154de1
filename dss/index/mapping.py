"""Field types (the dynamic mapping) and the analysed form of a document.

Like Elasticsearch's dynamic mapping, a field's type is fixed by the first value ever indexed into it:
strings become normalised keywords with a `.text` sub-field (or dates, when they look like one),
integers `long`, reals `float`, booleans `boolean`; `uuid` and `manifest.version` are explicit raw
keywords. Later values are coerced to the field's type; a value that cannot be (an object where a value
was mapped, `"abc"` in a `long` field) is left out of the index. Elasticsearch rejects such a document;
the embedded engine keeps the rest of it searchable, as Elasticsearch does with `ignore_malformed`.
"""
from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dss.index import analysis

__all__ = [
    "FieldType", "Field", "FieldMap", "FieldLookup", "IndexedDoc", "analyse", "wildcard_names", "EXPLICIT_TYPES",
    "TEXT_SUFFIX", "EMPTY_TEXT_SUFFIX", "NUMERIC_TYPES",
]

logger = logging.getLogger(__name__)

TEXT_SUFFIX = ".text"
# Where the index notes that a `.text` field is present although its values gave no token ("", "!!"):
# Elasticsearch still counts such a field as existing (it has norms). Never a real field's name: the
# part before it is a keyword field, which cannot have sub-fields of its own.
EMPTY_TEXT_SUFFIX = ".text#empty"


class FieldType(enum.StrEnum):
    KEYWORD = "keyword"        # lower-cased keyword, with an analysed `.text` sub-field
    RAW_KEYWORD = "raw"        # exact keyword (uuid, manifest.version)
    LONG = "long"
    FLOAT = "float"
    DATE = "date"
    BOOLEAN = "boolean"
    OBJECT = "object"
    TEXT = "text"              # the `.text` sub-field of a KEYWORD field


NUMERIC_TYPES = frozenset({FieldType.LONG, FieldType.FLOAT, FieldType.DATE, FieldType.BOOLEAN})
EXPLICIT_TYPES: Mapping[str, FieldType] = {
    "uuid": FieldType.RAW_KEYWORD, "manifest": FieldType.OBJECT, "manifest.version": FieldType.RAW_KEYWORD,
}


def wildcard_names(pattern: str) -> re.Pattern[str]:
    """Elasticsearch's simple match: `*` is any run of characters (dots included); nothing else is special."""
    return re.compile("".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern))
                      + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class Field:
    """A queryable field. For a `.text` sub-field, `base` is the keyword field it analyses."""
    name: str
    type: FieldType
    base: str

    @property
    def space(self) -> str:
        """Where its terms live: `kw` (keywords), `tok` (text tokens) or `num` (numbers, dates, booleans)."""
        if self.type in NUMERIC_TYPES:
            return "num"
        return "tok" if self.type is FieldType.TEXT else "kw"


class FieldLookup(Protocol):
    """What query parsing needs from a mapping."""

    def resolve(self, name: str) -> Field | None: ...

    def expand(self, pattern: str) -> list[str]: ...

    def queryable_names(self) -> list[str]: ...


class FieldMap:
    """Field name → type, for the leaf and object fields of one index. Grows, never changes a type."""

    def __init__(self, types: Mapping[str, FieldType] | None = None) -> None:
        self._types: dict[str, FieldType] = dict(EXPLICIT_TYPES)
        self._types.update(types or {})
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return len(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def items(self) -> Iterable[tuple[str, FieldType]]:
        return self._types.items()

    def get(self, name: str) -> FieldType | None:
        return self._types.get(name)

    def add(self, name: str, field_type: FieldType) -> None:
        if name not in self._types:
            self._types[name] = field_type
            self._names = None

    def extended(self, new_types: Mapping[str, FieldType]) -> FieldMap:
        if not new_types:
            return self
        return FieldMap({**self._types, **new_types})

    def resolve(self, name: str) -> Field | None:
        """The field a query names, or None when it is not mapped (queries on it match nothing)."""
        field_type = self._types.get(name)
        if field_type is not None:
            return Field(name, field_type, name)
        if name.endswith(TEXT_SUFFIX):
            base = name[: -len(TEXT_SUFFIX)]
            if self._types.get(base) is FieldType.KEYWORD:
                return Field(name, FieldType.TEXT, base)
        return None

    def queryable_names(self) -> list[str]:
        """Every leaf field and `.text` sub-field, in a stable order."""
        if self._names is None:
            names = []
            for name, field_type in sorted(self._types.items()):
                if field_type is FieldType.OBJECT:
                    continue
                names.append(name)
                if field_type is FieldType.KEYWORD:
                    names.append(name + TEXT_SUFFIX)
            self._names = names
        return self._names

    def expand(self, pattern: str) -> list[str]:
        """Field names matching a pattern where `*` stands for any characters, dots included."""
        if "*" not in pattern:
            return [pattern] if self.resolve(pattern) else []
        regex = wildcard_names(pattern)
        return [name for name in self.queryable_names() if regex.match(name)]

    def object_leaves(self, name: str) -> list[str]:
        """Every queryable name under an object field."""
        prefix = name + "."
        return [candidate for candidate in self.queryable_names() if candidate.startswith(prefix)]


@dataclass
class IndexedDoc:
    """What the index holds for one document: terms per field, token positions, fields present."""
    keywords: dict[str, set[str]] = field(default_factory=dict)
    numbers: dict[str, set[int | float]] = field(default_factory=dict)
    tokens: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # keyword field → token → positions
    tokenless: set[str] = field(default_factory=set)  # keyword fields with values but not one token
    # positions of tokens that are a whole value, one ASCII word (then every value with that keyword
    # spells that token): segments find them under the keyword instead of `.text`, without positions,
    # which no phrase needs while its slop is below the POSITION_GAP between values
    words: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    objects: set[str] = field(default_factory=set)  # object fields with something indexed under them
    present: set[str] = field(default_factory=set)  # every queryable name with a value: leaves, `.text`, objects
    new_types: dict[str, FieldType] = field(default_factory=dict)
    doc_id: str | None = None  # unknown when percolating, as in Elasticsearch


# ----------------------------------------------------------------------------------------- analysis

def _valid_key(key: Any) -> bool:
    return isinstance(key, str) and bool(key) and key[0] != "." and key[-1] != "." and ".." not in key


class _Collector:
    """Walks a document and gathers its scalar values per leaf path, in document order."""

    def __init__(self, fields: FieldMap) -> None:
        self.known = fields.get  # bound once: this is called for every value
        self.values: dict[str, list[Any]] = {}
        self.new_types: dict[str, FieldType] = {}

    def type_of(self, path: str) -> FieldType | None:
        return self.known(path) or self.new_types.get(path)

    def visit_object(self, obj: Mapping[str, Any], path: str) -> None:
        prefix = path + "." if path else ""
        for key, value in obj.items():
            if key.__class__ is not str or not key or "." in key:
                if not _valid_key(key):
                    logger.debug("Not indexing field %r under %r: not a valid field name", key, path)
                    continue
                if not self._mark_parents(prefix + key, len(path)):
                    continue
            if value is None or value.__class__ in (dict, list):
                self.visit(value, prefix + key)
            else:
                values = self.values.get(prefix + key)
                if values is not None:
                    values.append(value)
                else:
                    self.add_value(value, prefix + key)

    def _mark_parents(self, child: str, start: int) -> bool:
        return all(self._mark_object(child[:cut]) for cut, char in enumerate(child) if char == "." and cut > start)

    def _mark_object(self, path: str) -> bool:
        known = self.type_of(path)
        if known is None:
            self.new_types[path] = FieldType.OBJECT
            return True
        if known is not FieldType.OBJECT:
            logger.debug("Not indexing the object at %r: the field is mapped as %s", path, known.value)
            return False
        return True

    def visit(self, value: Any, path: str) -> None:
        if isinstance(value, dict):
            if self._mark_object(path):
                self.visit_object(value, path)
        elif isinstance(value, list):
            for item in value:
                self.visit(item, path)
        elif value is not None:
            self.add_value(value, path)

    def add_value(self, value: Any, path: str) -> None:
        values = self.values.get(path)
        if values is None:
            known = self.type_of(path)
            if known is FieldType.OBJECT:
                logger.debug("Not indexing the value at %r: the field is an object", path)
                return
            if known is None:
                self.new_types[path] = _infer_type(value)
            values = self.values[path] = []
        values.append(value)


def _infer_type(value: Any) -> FieldType:
    if isinstance(value, bool):
        return FieldType.BOOLEAN
    if isinstance(value, int):
        return FieldType.LONG
    if isinstance(value, float):
        return FieldType.FLOAT
    if isinstance(value, str) and analysis.looks_like_date(value):
        return FieldType.DATE
    return FieldType.KEYWORD


# Dates repeat across documents (submission and update times); parsing them is comparatively slow.
_DATES: dict[str, int] = {}
_DATES_LIMIT = 100_000


def _coerce_number(field_type: FieldType, value: Any) -> int | float:
    if field_type is FieldType.LONG:
        return int(analysis.parse_long(value))  # Elasticsearch truncates reals in long fields
    if field_type is FieldType.FLOAT:
        return analysis.parse_float(value)
    if field_type is FieldType.DATE:
        text = analysis.keyword_text(value) if not isinstance(value, bool) else None
        if text is None:
            raise ValueError(f"[{value}] is not a date")
        millis = _DATES.get(text)
        if millis is None:
            millis = analysis.parse_date(text)
            if len(_DATES) >= _DATES_LIMIT:
                _DATES.clear()
            _DATES[text] = millis
        return millis
    return int(analysis.parse_boolean(value))


def _add_numbers(doc: IndexedDoc, path: str, field_type: FieldType, values: list[Any]) -> None:
    numbers = set()
    for value in values:
        try:
            numbers.add(_coerce_number(field_type, value))
        except ValueError as error:
            logger.debug("Not indexing malformed value at %r: %s", path, error)
    if numbers:
        doc.numbers[path] = numbers


def _add_raw(doc: IndexedDoc, path: str, values: list[Any]) -> None:
    keywords = {text for text in map(analysis.keyword_text, values) if text is not None}
    if keywords:
        doc.keywords[path] = keywords


def _add_keywords(doc: IndexedDoc, path: str, values: list[Any]) -> None:
    if len(values) == 1:  # the common case, without the bookkeeping of positions across values
        value = values[0]
        text = value if value.__class__ is str else analysis.keyword_text(value)
        if text is None:
            return
        keyword = text.lower() if len(text) <= analysis.IGNORE_ABOVE else None
        if keyword is not None:
            doc.keywords[path] = {keyword}
        words = analysis.tokenize(text)
        if len(words) == 1:
            doc.tokens[path] = {words[0]: [0]}
            if words[0] == keyword and text.isascii():
                doc.words[path] = doc.tokens[path]
        elif words:
            positions: dict[str, list[int]] = {}
            for position, word in enumerate(words):
                if word in positions:
                    positions[word].append(position)
                else:
                    positions[word] = [position]
            doc.tokens[path] = positions
        else:
            doc.tokenless.add(path)
        return
    keywords: set[str] = set()
    tokens: dict[str, list[int]] = {}
    whole: dict[str, list[int]] = {}
    position = -1
    tokenize, ignore_above, gap = analysis.tokenize, analysis.IGNORE_ABOVE, analysis.POSITION_GAP
    for index, value in enumerate(values):
        text = value if value.__class__ is str else analysis.keyword_text(value)
        if text is None:
            continue
        keyword = text.lower() if len(text) <= ignore_above else None
        if keyword is not None:
            keywords.add(keyword)
        if index:
            position += gap
        words = tokenize(text)
        for token in words:
            position += 1
            if token in tokens:
                tokens[token].append(position)
            else:
                tokens[token] = [position]
        if len(words) == 1 and words[0] == keyword and text.isascii():
            whole.setdefault(keyword, []).append(position)
    if keywords:
        doc.keywords[path] = keywords
    if whole:
        doc.words[path] = whole
    if tokens:
        doc.tokens[path] = tokens
    elif any(analysis.keyword_text(value) is not None for value in values):
        doc.tokenless.add(path)


def analyse(source: Mapping[str, Any], fields: FieldMap, doc_id: str | None = None) -> IndexedDoc:
    """The indexed form of `source` under `fields`; `new_types` lists the fields it would add."""
    collector = _Collector(fields)
    collector.visit_object(source, "")
    doc = IndexedDoc(new_types=collector.new_types, doc_id=doc_id)
    for path, values in collector.values.items():
        field_type = collector.type_of(path)
        if field_type is FieldType.KEYWORD:
            _add_keywords(doc, path, values)
        elif field_type is FieldType.RAW_KEYWORD:
            _add_raw(doc, path, values)
        elif field_type is not None:
            _add_numbers(doc, path, field_type, values)
    _add_presence(doc)
    return doc


def _add_presence(doc: IndexedDoc) -> None:
    """Object fields are present when anything under them is (that is what `exists` on them tests)."""
    objects = doc.objects
    for leaf in (*doc.keywords, *doc.numbers, *doc.tokens, *doc.tokenless):
        cut = leaf.rfind(".")
        while cut > 0:
            parent = leaf[:cut]
            if parent in objects:
                break
            objects.add(parent)
            cut = leaf.rfind(".", 0, cut)
    texts = (name + TEXT_SUFFIX for name in (*doc.tokens, *doc.tokenless))
    doc.present = {*doc.keywords, *doc.numbers, *texts, *objects}
