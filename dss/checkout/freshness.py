"""How long a checked-out object may be served, and when it is copied again.

A checkout object lives `DSS_BLOB_TTL_DAYS` (14): it is not served in its last hour (`MARGIN`, so that
a signed URL handed out never points at an object about to be swept) and is deleted by the expiry sweep
after it. Once older than `DSS_BLOB_PUBLIC_TTL_DAYS` (7) it is still served, and copied again in the
background, which starts its lifetime over.

Small JSON files (`cacheable`: the original's CHECKOUT_CACHE_CRITERIA, application/json up to 12,314
bytes) are checked out eagerly when registered and never expire: indexers read them all the time.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum

from dss.storage.blobstore import BlobInfo

__all__ = ["Freshness", "State", "cacheable", "MARGIN", "CACHE_MAX_SIZE"]

DAY = 86400.0
MARGIN = 3600.0
CACHE_CONTENT_TYPE = "application/json"
CACHE_MAX_SIZE = 12_314


def cacheable(content_type: str, size: int) -> bool:
    return content_type.startswith(CACHE_CONTENT_TYPE) and size <= CACHE_MAX_SIZE


class State(enum.Enum):
    MISSING = "missing"  # absent, incomplete or expiring: not served
    STALE = "stale"      # served, and copied again in the background
    FRESH = "fresh"      # served

    @property
    def servable(self) -> bool:
        return self is not State.MISSING


@dataclasses.dataclass(frozen=True)
class Freshness:
    ttl: float = 14 * DAY            # seconds an object lives
    refresh_after: float = 7 * DAY   # seconds after which it is copied again

    @classmethod
    def from_days(cls, ttl_days: float, refresh_days: float) -> Freshness:
        ttl = ttl_days * DAY
        return cls(ttl, min(refresh_days * DAY, max(ttl - MARGIN, 0.0)))  # refreshed before it stops being served

    def age(self, info: BlobInfo, now: datetime.datetime | None = None) -> float | None:
        if info.last_modified is None:
            return None
        return ((now or datetime.datetime.now(datetime.UTC)) - info.last_modified).total_seconds()

    def of_age(self, age: float | None, *, cached: bool = False) -> State:
        """The state of an object (or a whole bundle checkout) of this age, in seconds."""
        if age is None:
            return State.STALE  # a store that keeps no time: serve, and refresh now and then
        if not cached and age >= self.ttl - MARGIN:
            return State.MISSING
        return State.STALE if age >= self.refresh_after else State.FRESH

    def of_object(self, info: BlobInfo | None, size: int, now: datetime.datetime | None = None) -> State:
        """The state of a file checkout: `info` is the checkout object's (None if absent), `size` the file's."""
        if info is None or info.size != size:
            return State.MISSING
        return self.of_age(self.age(info, now), cached=cacheable(info.content_type, info.size))

    def expired(self, info: BlobInfo, now: datetime.datetime | None = None) -> bool:
        """May the sweep delete it?"""
        age = self.age(info, now)
        return age is not None and age >= self.ttl and not cacheable(info.content_type, info.size)
