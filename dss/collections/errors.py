"""The errors of collections, named by meaning; `dss.api.errors` maps them by their base classes."""
from __future__ import annotations

from dss.errors import Conflict, Forbidden, NotFound, Unprocessable

__all__ = ["InvalidLink", "CollectionConflict", "CollectionDeleted", "CollectionNotFound", "NotCollectionOwner",
           "CollectionTooLarge"]


class InvalidLink(Unprocessable):
    """An item names an object this replica does not hold, one over 1 MiB, or a fragment it lacks (422)."""
    code = "invalid_link"


class CollectionTooLarge(Unprocessable):
    code = "collection_too_large"


class CollectionConflict(Conflict):
    """That uuid.version exists with other content: versions are immutable (409)."""
    code = "collection_already_exists"


class CollectionDeleted(Conflict):
    """The uuid is tombstoned; a deleted collection stays deleted (409)."""
    code = "collection_deleted"


class CollectionNotFound(NotFound):
    code = "not_found"


class NotCollectionOwner(Forbidden):
    """The contract's code for collections is lower case, unlike the token checks' `Forbidden`."""
    code = "forbidden"
