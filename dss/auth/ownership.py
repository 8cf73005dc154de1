"""Who may write new versions of a file, bundle or collection: its owner, and administrators.

The original service let any valid token add versions to any file or bundle UUID. Since a read without
`version` answers the latest version, that let one user change what another user's UUID means. Here the
first writer of a UUID becomes its owner (recorded with a conditional create in the `owners` table, so of
two racing first writers exactly one wins); later writes of that UUID need the owner's identity or an
administrator's e-mail. UUIDs written before owners were recorded are claimed by their next writer.

A caller's identity is the token's e-mail, or, for tokens without one, its issuer and subject.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from dss.auth import Principal
from dss.errors import Forbidden
from dss.identifiers import normalise_uuid
from dss.tables import Table, TableConflict

__all__ = ["Ownership", "identity"]

logger = logging.getLogger(__name__)


def identity(principal: Principal) -> str:
    return principal.email or f"{principal.issuer} {principal.subject}"


class Ownership:
    def __init__(self, table: Table, admin_emails: Iterable[str]) -> None:
        self.table = table
        self.admin_emails = frozenset(admin_emails)

    def claim(self, kind: str, uuid: str, principal: Principal) -> str:
        """Record the caller as the owner of `kind`/`uuid` if it has none; refuse anyone else but admins.
        Returns the owner's identity (an administrator writing for someone else gets that owner's)."""
        uuid = normalise_uuid(uuid)
        caller, key = identity(principal), f"{kind}/{uuid}"
        try:
            self.table.put(key, "owner", {"owner": caller}, if_absent=True)
            return caller
        except TableConflict:
            owner = (self.table.get(key, "owner") or {}).get("owner")
        if owner != caller and principal.email not in self.admin_emails:
            logger.info("Refused a write of %s by a caller who does not own it", key)
            raise Forbidden(f"{kind[:-1].capitalize()} {uuid} belongs to another user")
        return owner or caller
