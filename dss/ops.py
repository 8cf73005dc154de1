"""Operator checks that read storage directly (used by scripts/dss-ops.py and tests)."""
from __future__ import annotations

from dss.identifiers import Replica
from dss.storage.replicas import Replicas

__all__ = ["verify_sync"]


def verify_sync(replicas: Replicas, source: Replica) -> list[str]:
    """Keys present in `source` but missing (or of another size) in the other replica."""
    src, dst = replicas[source], replicas[source.other]
    problems = []
    for prefix in ("blobs/", "files/", "bundles/"):
        for key in src.list(prefix):
            try:
                if dst.head(key).size != src.head(key).size:
                    problems.append(f"size differs: {key}")
            except Exception:  # noqa: BLE001 - a missing or unreadable key is what we report
                problems.append(f"missing in {source.other.value}: {key}")
    return problems
