"""`_source` filtering of search hits: include and exclude patterns over dotted paths.

A path is kept when it, or an object above it, matches an include pattern (or there are none), and
neither it nor an object above it matches an exclude pattern. `*` matches any characters, dots
included. Objects and arrays left empty by filtering are dropped, as Elasticsearch does.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dss.index.backend import InvalidQuery
from dss.index.mapping import wildcard_names

__all__ = ["SourceFilter"]


def _patterns(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise InvalidQuery(f"[_source] patterns must be a string or an array of strings, got {value!r}")


@dataclass(frozen=True)
class SourceFilter:
    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: Any) -> SourceFilter:
        if isinstance(spec, bool):
            return cls(enabled=spec)
        if isinstance(spec, (str, list)):
            return cls(includes=_patterns(spec))
        if isinstance(spec, Mapping):
            for key in spec:
                if key not in ("includes", "include", "excludes", "exclude"):
                    raise InvalidQuery(f"[_source] unknown key [{key}]")
            return cls(includes=_patterns(spec.get("includes", spec.get("include"))),
                       excludes=_patterns(spec.get("excludes", spec.get("exclude"))))
        raise InvalidQuery(f"[_source] must be a boolean, a string, an array or an object, got {spec!r}")

    def apply(self, source: Mapping[str, Any]) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        if not self.includes and not self.excludes:
            return dict(source)
        return _Filter(self.includes, self.excludes).object(source, "", not self.includes)


class _Filter:
    def __init__(self, includes: tuple[str, ...], excludes: tuple[str, ...]) -> None:
        self._includes = [wildcard_names(pattern) for pattern in includes]
        self._excludes = [wildcard_names(pattern) for pattern in excludes]

    @staticmethod
    def _matches(patterns: list[re.Pattern[str]], path: str) -> bool:
        return any(pattern.match(path) for pattern in patterns)

    def object(self, obj: Mapping[str, Any], path: str, included: bool) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in obj.items():
            child = f"{path}.{key}" if path else key
            if self._matches(self._excludes, child):
                continue
            child_included = included or self._matches(self._includes, child)
            value = self.value(value, child, child_included)
            if value is not _DROP:
                kept[key] = value
        return kept

    def value(self, value: Any, path: str, included: bool) -> Any:
        if isinstance(value, Mapping):
            kept = self.object(value, path, included)
            return kept if kept or (included and not value) else _DROP
        if isinstance(value, list):
            items = [self.value(item, path, included) for item in value]
            kept_items = [item for item in items if item is not _DROP]
            return kept_items if kept_items or (included and not value) else _DROP
        return value if included else _DROP


_DROP = object()
