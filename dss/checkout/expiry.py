"""The embedded default's expiry of checkout objects (buckets in the cloud use lifecycle rules instead).

`sweep` deletes every checked-out object (`blobs/…`, `bundles/…/…`) of a checkout store older than
`DSS_BLOB_TTL_DAYS`, except the small JSON files that are kept checked out (`freshness.cacheable`). It
runs with the reconcile pass (start-up and every `DSS_RECONCILE_INTERVAL`). Reads never point at an
object in its last hour (`freshness.MARGIN`), so none is deleted under a signed URL still valid.
"""
from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from dss.checkout.freshness import Freshness
from dss.storage.blobstore import BlobNotFound, BlobStore

__all__ = ["sweep"]

logger = logging.getLogger(__name__)


def sweep(store: BlobStore, freshness: Freshness, cancelled: Callable[[], bool] = lambda: False,
          now: datetime.datetime | None = None) -> int:
    """Delete the expired checkout objects of `store`; returns how many."""
    now = now or datetime.datetime.now(datetime.UTC)
    removed = 0
    for prefix in ("blobs/", "bundles/"):
        for key in list(store.list(prefix)):
            if cancelled():
                return removed
            try:
                info = store.head(key)
            except BlobNotFound:
                continue
            if freshness.expired(info, now):
                store.delete(key)
                removed += 1
    if removed:
        logger.info("Removed %d expired checkout objects from %s", removed, store.url)
    return removed
