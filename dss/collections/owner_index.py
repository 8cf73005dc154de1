"""The owner index: which collection versions each owner has, for `GET /collections`.

One item per version in the `collections` table: hash key = the owner's identity, sort key =
`<uuid>.<version>` (the original's layout), so a query lists an owner's collections in uuid, then version,
order. Unlike the original, PATCH adds its new version here too, and a PUT by someone else never lands.
"""
from __future__ import annotations

from dss.tables import Table

__all__ = ["OwnerIndex", "TABLE"]

TABLE = "collections"


class OwnerIndex:
    def __init__(self, table: Table) -> None:
        self.table = table

    def add(self, owner: str, uuid: str, version: str) -> None:
        self.table.put(owner, f"{uuid}.{version}", {"uuid": uuid, "version": version, "permission": "owner"})

    def remove(self, owner: str, uuid: str) -> None:
        """Forget every version of `uuid` (after its tombstone is written)."""
        for item in self.table.query(owner):
            if item["uuid"] == uuid:
                self.table.delete(owner, f"{uuid}.{item['version']}")

    def page(self, owner: str, start_at: int, per_page: int) -> tuple[list[dict[str, str]], bool]:
        """Up to `per_page` of the owner's collections from position `start_at`, and whether more follow."""
        items = self.table.query_slice(owner, start_at, per_page + 1)
        return [{"uuid": i["uuid"], "version": i["version"]} for i in items[:per_page]], len(items) > per_page
