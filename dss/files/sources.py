"""Staged sources of PUT /files: an object in an S3 or GCS bucket, or a file under a staging root.

Declared checksums come from the object's tags and user metadata (tags win), under the names the
`hca` client (`hca-dss-sha256` …) and the `dbio` client (`dss-sha256` …) use. A local file declares
none; the server computes them while copying.
"""
from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dss.checksums import CHECKSUM_PATTERNS
from dss.errors import IllegalArguments, IllegalSource, InvalidChecksum, MissingChecksum, UnknownSourceSchema
from dss.identifiers import Replica
from dss.storage.blobstore import BlobAccessDenied, BlobNotFound, BlobStore, BlobStoreFactory

__all__ = ["StagedSource", "SourceResolver"]

_URL_RE = re.compile(r"^(s3|gs|wasb|file)://([^/]*)/(.+)$")
_PREFIXES = ("hca-dss-", "dss-")
_REPLICA_OF_SCHEME = {"s3": Replica.aws, "gs": Replica.gcp, "file": Replica.aws}


@dataclass(frozen=True)
class StagedSource:
    url: str
    replica: Replica
    size: int
    content_type: str
    declared: Mapping[str, str] | None  # None: nothing declared (local files)
    open: Callable[[], BinaryIO]


def _declared_checksums(tags: Mapping[str, str], metadata: Mapping[str, str]) -> dict[str, str]:
    merged = {k.lower(): v for k, v in metadata.items()}
    merged.update({k.lower(): v for k, v in tags.items()})
    found: dict[str, str] = {}
    for name, pattern in CHECKSUM_PATTERNS.items():
        value = next((merged[p + name] for p in _PREFIXES if p + name in merged), None)
        if value is None:
            raise MissingChecksum(f"Source object lacks the checksum tag or metadata 'hca-dss-{name}'")
        value = value.strip().lower()
        if not pattern.match(value):
            raise InvalidChecksum(f"Checksum 'hca-dss-{name}' of the source object is malformed: {value!r}")
        found[name] = value
    return found


class SourceResolver:
    def __init__(self, factory: BlobStoreFactory, staging_roots: tuple[Path, ...]) -> None:
        self.factory = factory
        self.staging_roots = staging_roots

    def resolve(self, url: str) -> StagedSource:
        match = _URL_RE.match(url)
        if not match:
            if url.startswith("wasb://"):
                raise UnknownSourceSchema(f"Unknown source URL scheme in {url!r}")
            raise IllegalArguments(
                f"source_url must look like s3://bucket/key, gs://bucket/key or file:///path: {url!r}")
        scheme, bucket, key = match.groups()
        if scheme == "wasb":
            raise UnknownSourceSchema(f"Unknown source URL scheme in {url!r}")
        if scheme == "file":
            return self._local(url, bucket, key)
        return self._bucket(url, scheme, self.factory.for_url(f"{scheme}://{bucket}"), key)

    def _bucket(self, url: str, scheme: str, store: BlobStore, key: str) -> StagedSource:
        try:
            info = store.head(key)
            tags = store.tags(key)
        except BlobNotFound:
            raise IllegalSource(f"Source object {url} does not exist", code="source_not_found") from None
        except BlobAccessDenied:
            raise IllegalSource(f"Access to the source object {url} was denied") from None
        declared = _declared_checksums(tags, info.metadata)
        return StagedSource(url, _REPLICA_OF_SCHEME[scheme], info.size, info.content_type or "application/octet-stream",
                            declared, lambda: store.open(key))

    def _local(self, url: str, host: str, rest: str) -> StagedSource:
        if host not in ("", "localhost"):
            raise IllegalSource(f"file:// sources must be local paths: {url!r}")
        path = Path("/" + rest).resolve()
        if not any(path.is_relative_to(root) for root in self.staging_roots):
            raise IllegalSource(f"{url} is not under a staging root (DSS_STAGING_ROOTS)")
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise IllegalSource(f"Source file {url} does not exist", code="source_not_found") from None
        if not path.is_file():
            raise IllegalSource(f"{url} is not a regular file")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return StagedSource(url, Replica.aws, size, content_type, None, lambda: open(path, "rb"))
