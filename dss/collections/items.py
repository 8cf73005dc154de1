"""Collection items and the text fields of a collection: parsed, bounded and normalised here.

An item names one object version, `{type, uuid, version}`, with an optional JSON pointer (RFC 6901)
into the JSON it refers to. `type` is `file`, `bundle` or `collection`; the original also accepted any
other word as "a metadata fragment of a file", so such a type is read as a file reference that must carry
a pointer. The pointer arrives under `fragment` (what the original's code read) or `path` (what its spec
said); it is stored as `fragment`, so that two spellings of one item are one item.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dss.collections.errors import InvalidLink
from dss.errors import IllegalArguments
from dss.identifiers import normalise_uuid, validate_text, validate_version
from dss.jsonlimits import UnsafeJSON, check_json

__all__ = ["CollectionItem", "parse_items", "dedupe", "resolve_pointer", "PointerError", "check_text_fields",
           "KINDS", "MAX_ITEMS_PER_REQUEST", "MAX_ITEMS", "MAX_NAME", "MAX_DESCRIPTION", "MAX_DETAILS",
           "MAX_DETAILS_DEPTH", "MAX_FRAGMENT", "MAX_TYPE"]

KINDS = {"file": "files", "bundle": "bundles", "collection": "collections"}
MAX_ITEMS_PER_REQUEST = 1000  # PUT contents, PATCH add_contents and remove_contents, each
MAX_ITEMS = 10_000  # a collection's contents after any PATCH: its document stays a few MiB at most
MAX_NAME = 1024  # characters
MAX_DESCRIPTION = 64 * 1024  # characters of Markdown
MAX_DETAILS = 64 * 1024  # bytes of compact JSON
MAX_DETAILS_DEPTH = 32
MAX_FRAGMENT = 1024  # characters of JSON pointer
MAX_TYPE = 64
_TYPE = re.compile(r"[a-z][a-z0-9_.-]*", re.IGNORECASE)


@dataclass(frozen=True)
class CollectionItem:
    type: str
    uuid: str
    version: str
    fragment: str | None = None

    @property
    def kind(self) -> str:
        """The key prefix of the referenced object: custom types are fragments of files."""
        return KINDS.get(self.type, "files")

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.uuid}.{self.version}"

    def as_dict(self) -> dict[str, str]:
        item = {"type": self.type, "uuid": self.uuid, "version": self.version}
        if self.fragment is not None:
            item["fragment"] = self.fragment
        return item

    @classmethod
    def parse(cls, item: Any) -> CollectionItem:
        if not isinstance(item, Mapping):
            raise IllegalArguments("A collection item is an object {type, uuid, version[, fragment]}")
        kind = item.get("type")
        if not isinstance(kind, str) or len(kind) > MAX_TYPE or not _TYPE.fullmatch(kind):
            raise IllegalArguments(f"A collection item's type is file, bundle, collection or a word of at most "
                                   f"{MAX_TYPE} letters, digits, '_', '.', '-': {str(kind)[:80]!r}")
        fragment = _fragment(item)
        if kind not in KINDS and fragment is None:
            # The original answered 422 here too: a custom type only names a fragment of a file.
            raise InvalidLink(f"An item of type {kind!r} is a metadata fragment and needs a 'fragment' pointer")
        return cls(kind, normalise_uuid(item.get("uuid", "")), validate_version(item.get("version", "")), fragment)


def _fragment(item: Mapping[str, Any]) -> str | None:
    fragment, path = item.get("fragment"), item.get("path")
    if fragment is not None and path is not None and fragment != path:
        raise IllegalArguments("A collection item has both 'fragment' and 'path', and they differ")
    value = fragment if fragment is not None else path
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_FRAGMENT:
        raise IllegalArguments(f"A fragment is a JSON pointer of at most {MAX_FRAGMENT} characters")
    validate_text(value, "fragment")
    _tokens(value)  # malformed pointers are refused before anything is read
    return value


def parse_items(items: Any, what: str, limit: int = MAX_ITEMS_PER_REQUEST) -> list[CollectionItem]:
    if items is None:
        return []
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise IllegalArguments(f"{what} should be an array of collection items")
    if len(items) > limit:
        raise IllegalArguments(f"{what} may hold at most {limit} items, not {len(items)}")
    return [CollectionItem.parse(item) for item in items]


def dedupe(items: Iterable[CollectionItem]) -> list[CollectionItem]:
    """Each item once, where it first appears."""
    return list(dict.fromkeys(items))


def check_text_fields(fields: Mapping[str, Any], required: bool) -> dict[str, Any]:
    """`name`, `description` and `details`, bounded; those absent stay absent unless `required`."""
    checked: dict[str, Any] = {}
    for field, limit in (("name", MAX_NAME), ("description", MAX_DESCRIPTION)):
        value = fields.get(field)
        if value is None:
            if required:
                raise IllegalArguments(f"'{field}' is a required property")
            continue
        validate_text(value, field)
        if len(value) > limit:
            raise IllegalArguments(f"{field} may be at most {limit} characters long")
        checked[field] = value
    details = fields.get("details")
    if details is None:
        if required:
            raise IllegalArguments("'details' is a required property")
    else:
        checked["details"] = _checked_details(details)
    return checked


def _checked_details(details: Any) -> dict[str, Any]:
    if not isinstance(details, Mapping):
        raise IllegalArguments("details should be an object")
    try:
        text = json.dumps(details, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        raise IllegalArguments("details should be finite JSON") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DETAILS:
        raise IllegalArguments(f"details may be at most {MAX_DETAILS} bytes of JSON")
    try:
        check_json(text, max_depth=MAX_DETAILS_DEPTH)
    except UnsafeJSON as e:
        raise IllegalArguments(f"details: {e}") from None
    return dict(details)


class PointerError(ValueError):
    """The pointer is malformed, or names nothing in the document."""


def _tokens(pointer: str) -> list[str]:
    """RFC 6901 reference tokens of a pointer in its string form (`/a/0`) or URI-fragment form (`#/a/0`)."""
    if pointer.startswith("#"):
        pointer = urllib.parse.unquote(pointer[1:])
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise IllegalArguments(f"A fragment is a JSON pointer such as '/a/0': {pointer[:80]!r}")
    tokens = pointer[1:].split("/")
    if any(re.search(r"~(?![01])", token) for token in tokens):
        raise IllegalArguments(f"A JSON pointer escapes only '~0' and '~1': {pointer[:80]!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def resolve_pointer(document: Any, pointer: str) -> Any:
    node = document
    for token in _tokens(pointer):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and re.fullmatch(r"0|[1-9][0-9]*", token) and int(token) < len(node):
            node = node[int(token)]
        else:
            raise PointerError(f"{pointer!r} names nothing in the document")
    return node
