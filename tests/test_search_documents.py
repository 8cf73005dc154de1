"""The bundle → search document functions (pure; no index involved)."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dss.index import build_document, normalise_name, tombstone_document
from tests.fixtures.hca_corpus import generate_bundles


@pytest.mark.parametrize("name,expected", [
    ("library_preparation_protocol_0.json", "library_preparation_protocol_json"),
    ("cell_suspension.json", "cell_json"),  # the original's quirk: any segment before json is dropped
    ("cell_suspension_0.json", "cell_suspension_json"),
    ("project.json", "project_json"),
    ("project_0.json", "project_json"),
    ("links.json", "links_json"),
    ("a.b.json", "a_json"),
    ("notes.txt", "notes_txt"),
    ("sequence_file_12.json", "sequence_file_json"),
])
def test_normalise_name(name: str, expected: str) -> None:
    assert normalise_name(name) == expected


def _entry(name: str, *, indexed: bool = True, content_type: str = "application/json") -> dict[str, Any]:
    return {"name": name, "uuid": name, "version": "v", "content-type": content_type, "indexed": indexed}


def _loader(contents: dict[str, str]) -> Any:
    return lambda entry: json.loads(contents[entry["uuid"]])


def test_only_indexed_json_files_are_loaded(caplog: pytest.LogCaptureFixture) -> None:
    manifest = {"version": "v1", "files": [
        _entry("sequence_file_0.json"), _entry("sequence_file_1.json"),
        _entry("analysis_0.json", indexed=False),
        _entry("reads.fastq.gz", content_type="application/gzip", indexed=False),
        _entry("readme.json", content_type="text/plain"),
        _entry("broken_0.json", content_type="application/json; dss-type=metadata"),
    ]}
    contents = {"sequence_file_0.json": '{"read": 1}', "sequence_file_1.json": '{"read": 2}',
                "analysis_0.json": "{}", "broken_0.json": "{nope"}
    with caplog.at_level(logging.WARNING, logger="dss.index.document"):
        doc = build_document("u1", manifest, _loader(contents))
    assert doc == {"uuid": "u1", "manifest": manifest, "state": "new",
                   "files": {"sequence_file_json": [{"read": 1}, {"read": 2}]}}
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "broken_0.json" in warnings and "readme.json" in warnings


def test_unreadable_files_propagate() -> None:
    def load(entry: Any) -> Any:
        raise OSError("blob missing")
    with pytest.raises(OSError):
        build_document("u1", {"version": "v", "files": [_entry("a_0.json")]}, load)


def test_large_manifests_lose_their_file_list() -> None:
    manifest = {"version": "v1", "files": [_entry(f"f_{n}.json", indexed=False) for n in range(25)]}
    doc = build_document("u1", manifest, _loader({}), manifest_file_limit=20)
    assert doc["manifest"] == {"version": "v1", "files": []}
    assert manifest["files"]  # the caller's manifest is untouched
    assert build_document("u1", manifest, _loader({}), manifest_file_limit=25)["manifest"] == manifest


def test_tombstone_document() -> None:
    tombstone = {"email": "admin@example.org", "reason": "mistake", "admin_deleted": True}
    assert tombstone_document("u1", "v1", tombstone) == {**tombstone, "uuid": "u1", "manifest": {"version": "v1"}}
    assert tombstone_document("u1", "v2", tombstone)["manifest"] == {"version": "v2"}


def test_corpus_documents_look_like_hca_bundles() -> None:
    bundles = generate_bundles(40, seed=1)
    assert generate_bundles(40, seed=1) == bundles  # deterministic
    names = {name for bundle in bundles for name in bundle.document()["files"]}
    assert {"donor_organism_json", "specimen_from_organism_json", "cell_suspension_json",
            "library_preparation_protocol_json", "sequence_file_json", "project_json", "cell_json"} <= names
    doc = bundles[0].document()
    assert len(doc["files"]["sequence_file_json"]) >= 2
    assert doc["files"]["donor_organism_json"][0]["genus_species"][0]["text"] in ("Homo sapiens", "Mus musculus")
    assert doc["manifest"]["version"].endswith(".000000Z")
