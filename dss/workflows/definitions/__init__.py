"""The Amazon States Language definitions, one JSON file per workflow, shared by both modes.

Task `Resource`s are placeholders naming DSS tasks (`dss.workflows.binding`); the embedded executor runs
the files as they are, a deployment renders them with Lambda ARNs. Inputs, per workflow:

* `blob-copy`: copy one object between stores in parallel parts, verified.
  `{"source": {"url", "key"}, "destination": {"url", "key"}, "part_size"?, "slices"?, "overwrite"?,
  "expected"? {sha256, sha1, s3_etag, crc32c}, "record"? {"table", "hash_key", "sort_key"}}` — checksums
  default to those a `blobs/…` destination key spells; on failure the error is written to `record`.
* `blob-copy-write-metadata`: the same, then writes `"metadata": {"url", "key", "document"}` once the
  blob is verified (the 202 `PUT /files` path).
* `sync-large-blob`: the large-blob branch of replication: the copy shape between two replicas.
* `file-checkout`: the copy shape into a checkout store, skipped while the checked-out copy is fresh
  (`"refresh_after"` seconds).
* `bundle-checkout`: `{"bundle": {"url", "key"}, "destination": {"url", "prefix"}, "status": {"url",
  "key"}, "batch_size"?}`: validate, then copy every file of the manifest under the prefix in batches,
  writing `{"status": RUNNING | SUCCEEDED (+ location) | FAILED (+ cause)}` to the status object.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["DEFINITIONS_DIR", "names", "path", "load"]

DEFINITIONS_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in DEFINITIONS_DIR.glob("*.json"))


def path(name: str) -> Path:
    candidate = DEFINITIONS_DIR / f"{name}.json"
    if name not in names():
        raise KeyError(f"no workflow definition named {name!r}")
    return candidate


def load(name: str) -> dict:
    return json.loads(path(name).read_text())
