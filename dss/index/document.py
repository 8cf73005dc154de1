"""The search document of a bundle: pure functions, no I/O.

A bundle's document is `{"uuid", "manifest", "files": {<normalised name>: [content, …]}, "state": "new"}`.
Only manifest entries flagged `indexed` whose content type is JSON contribute to `files`; several files
may share a normalised name, hence the lists. A tombstoned bundle is indexed as its tombstone instead.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["normalise_name", "build_document", "tombstone_document", "doc_id_of", "DEFAULT_MANIFEST_FILE_LIMIT"]

logger = logging.getLogger(__name__)

# Above this many files the manifest's file list is left out of the document: the original system hit
# the ~100 MB request limit of the AWS Elasticsearch service with such bundles.
DEFAULT_MANIFEST_FILE_LIMIT = 20000

# `<head>_<one more segment>_json`: the segment before `json` is dropped. It is meant for numeric
# suffixes (`assay_0.json`), but the original never checked, so `cell_suspension.json` becomes
# `cell_json`; a single segment (`project.json`) is left alone. Clients' queries depend on both.
_DROP_SEGMENT = re.compile(r"^(.+)_[^_]+_json$")

LoadJson = Callable[[Mapping[str, Any]], Any]


def normalise_name(name: str) -> str:
    underscored = name.replace(".", "_")
    match = _DROP_SEGMENT.match(underscored)
    return f"{match.group(1)}_json" if match else underscored


def doc_id_of(uuid: str, version: str) -> str:
    return f"{uuid}.{version}"


def _is_json(entry: Mapping[str, Any]) -> bool:
    content_type = str(entry.get("content-type", ""))
    return content_type.startswith("application/json")


def _load_files(manifest: Mapping[str, Any], load_json: LoadJson) -> dict[str, list[Any]]:
    files: dict[str, list[Any]] = {}
    for entry in manifest.get("files", []):
        if not entry.get("indexed"):
            continue
        if not _is_json(entry):
            logger.warning("Not indexing %s: flagged indexed but content type is %r",
                           entry.get("name"), entry.get("content-type"))
            continue
        try:
            content = load_json(entry)
        except ValueError as error:
            logger.warning("Not indexing %s: unparseable JSON (%s)", entry.get("name"), error)
            continue
        files.setdefault(normalise_name(str(entry["name"])), []).append(content)
    return files


def build_document(uuid: str, manifest: Mapping[str, Any], load_json: LoadJson,
                   manifest_file_limit: int = DEFAULT_MANIFEST_FILE_LIMIT) -> dict[str, Any]:
    """The document of bundle `uuid`; `load_json(entry)` returns a manifest entry's parsed content.

    `load_json` raises ValueError for content that is not JSON (the file is skipped with a warning);
    any other exception propagates, so that an unreadable blob leaves the bundle unindexed.
    """
    files = _load_files(manifest, load_json)
    indexed_manifest = dict(manifest)
    if len(manifest.get("files", [])) > manifest_file_limit:
        logger.info("Bundle %s has %d files, more than %d: its manifest file list is not indexed",
                    uuid, len(manifest["files"]), manifest_file_limit)
        indexed_manifest["files"] = []
    return {"uuid": uuid, "manifest": indexed_manifest, "files": files, "state": "new"}


def tombstone_document(uuid: str, version: str | None, tombstone: Mapping[str, Any]) -> dict[str, Any]:
    """What replaces a bundle version's document once it is tombstoned: the tombstone's fields, `uuid` and
    `manifest.version`, the version of the document replaced. (The original set the tombstone's own
    version there, null for a whole-bundle tombstone, so queries and attachments on `manifest.version`
    could not tell its documents apart.)"""
    return {**tombstone, "uuid": uuid, "manifest": {"version": version}}
