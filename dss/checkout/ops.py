"""Operator actions on checkouts (`scripts/dss-ops.py checkout status|add|remove|verify`)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

from dss.checkout.keys import bundle_prefix
from dss.checkout.service import CheckoutService
from dss.checksums import read_chunks
from dss.identifiers import BlobKey, Replica
from dss.storage.blobstore import BlobNotFound

__all__ = ["remove_file", "remove_bundle", "verify"]


def remove_file(service: CheckoutService, replica: Replica, blob: BlobKey) -> int:
    """Delete a file's checkout (the next read checks it out again); returns how many objects went."""
    store = service.stores[replica]
    existed = store.exists(str(blob))
    store.delete(str(blob))
    service.records.forget_file_checkout(replica, str(blob))
    return int(existed)


def remove_bundle(service: CheckoutService, replica: Replica, uuid: str, version: str) -> int:
    store = service.stores[replica]
    keys = list(store.list(bundle_prefix(uuid, version) + "/"))
    for key in keys:
        store.delete(key)
    service.records.forget_bundle_checkout(replica, f"{uuid}.{version}")
    return len(keys)


def verify(service: CheckoutService, replica: Replica) -> Iterator[str]:
    """Problems with the file checkouts of a replica: a copy whose blob is not in the replica, or whose
    bytes are not the blob's (size, sha256). Reads every checked-out byte."""
    store, source = service.stores[replica], service.replicas[replica]
    for key in store.list("blobs/"):
        blob = BlobKey.parse(key)
        if blob is None:
            yield f"{key}: not a blob key"
            continue
        try:
            expected = source.head(key).size
        except BlobNotFound:
            yield f"{key}: checked out, but not in the {replica.value} replica"
            continue
        digest, size = hashlib.sha256(), 0
        with store.open(key) as stream:
            for chunk in read_chunks(stream):
                digest.update(chunk)
                size += len(chunk)
        if size != expected or digest.hexdigest() != blob.sha256:
            yield f"{key}: the checked-out bytes differ from the blob ({size} bytes, sha256 {digest.hexdigest()})"
