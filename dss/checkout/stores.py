"""The checkout store of each replica, and the stores a bundle checkout may be sent to.

Each replica has one (`DSS_AWS_CHECKOUT_URL`, `DSS_GCP_CHECKOUT_URL`; the embedded default is a directory
beside the replicas, `$DSS_DATA_DIR/checkout/<replica>`, whose signed URLs the API serves under
`/blobstore/checkout-<replica>/…` as it serves the replicas').

A bundle checkout may name a `destination` bucket instead. It is a bucket of the checkout store's own
kind (`s3://<name>`, `gs://<name>`); for a local checkout store, a directory `destinations/<name>` beside
it. A destination is never one of the replicas themselves: a checkout must not write into the store.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from dss.errors import IllegalArguments
from dss.identifiers import Replica
from dss.storage.blobstore import BlobStore, BlobStoreFactory, split_url

__all__ = ["CheckoutStores", "DESTINATION"]

DESTINATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,221}$")  # a bucket name; never a path


class CheckoutStores:
    def __init__(self, factory: BlobStoreFactory, urls: Mapping[str, str], replica_urls: Mapping[str, str]) -> None:
        self.factory = factory
        self._stores = {Replica(name): factory.for_url(url, name=f"checkout-{name}") for name, url in urls.items()}
        self._replica_urls = {_normal(url) for url in replica_urls.values()}

    def __getitem__(self, replica: Replica | str) -> BlobStore:
        return self._stores[Replica(replica)]

    def __iter__(self) -> Iterator[Replica]:
        return iter(self._stores)

    def by_name(self, name: str) -> BlobStore | None:
        """The checkout store whose signed URLs are served under `/blobstore/<name>/`."""
        replica = name.removeprefix("checkout-")
        if not name.startswith("checkout-") or replica not in {r.value for r in self._stores}:
            return None
        return self._stores[Replica(replica)]

    def destination_url(self, replica: Replica, destination: str | None) -> str:
        """The store URL a bundle checkout of `replica` writes to (IllegalArguments if it may not)."""
        own = self[replica]
        if destination is None:
            return own.url
        if not DESTINATION.match(destination) or destination in (".", ".."):
            raise IllegalArguments(f"destination must be a bucket name, got {destination!r}")
        scheme, bucket, _ = split_url(own.url)
        url = (Path(bucket).parent / "destinations" / destination).as_uri() if scheme == "file" \
            else f"{scheme}://{destination}"
        if _normal(url) in self._replica_urls:
            raise IllegalArguments("destination may not be one of the replicas")
        return url


def _normal(url: str) -> str:
    scheme, bucket, _ = split_url(url)
    return Path(bucket).resolve().as_uri() if scheme == "file" else f"{scheme}://{bucket}"
