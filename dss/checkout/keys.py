"""Where checked-out objects live in a checkout store (the original's layout).

* a file checkout is the blob under **its own key**: `blobs/<sha256>.<sha1>.<s3_etag>.<crc32c>`;
* a bundle checkout puts each file under `bundles/<uuid>.<version>/<file name>`.
"""
from __future__ import annotations

from dss.identifiers import BlobKey

__all__ = ["file_key", "bundle_prefix", "bundle_file_key", "is_checkout_key"]


def file_key(blob: BlobKey) -> str:
    return str(blob)


def bundle_prefix(uuid: str, version: str) -> str:
    return f"bundles/{uuid}.{version}"


def bundle_file_key(uuid: str, version: str, name: str) -> str:
    return f"{bundle_prefix(uuid, version)}/{name}"


def is_checkout_key(key: str) -> bool:
    """Is `key` a checked-out object (and not, say, a staged part of a copy in flight)?"""
    return key.startswith(("blobs/", "bundles/"))
