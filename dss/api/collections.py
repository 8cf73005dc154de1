"""HTTP adapters for /collections: parse, call dss.collections, shape the reply.

Every operation needs a token with group `hca` (the contract). Reads of one collection are for its owner
and administrators (403 `forbidden`, the contract's lower-case code); writes follow the owner rule of files
and bundles (`dss.auth.ownership`), so a PUT can no longer replace another user's collection.
"""
from __future__ import annotations

from collections.abc import Callable

from dss.api.responses import next_link, page_headers, reply
from dss.auth import Principal, require_group
from dss.auth.ownership import identity
from dss.collections.errors import NotCollectionOwner
from dss.errors import Forbidden
from dss.identifiers import Replica
from dss.runtime import Runtime

__all__ = ["list_collections", "put", "get", "patch", "delete"]


def _caller(token_info: dict) -> Principal:
    principal: Principal = token_info["principal"]
    require_group(principal, {"hca"})
    return principal


def _claim(runtime: Runtime, uuid: str, principal: Principal) -> Callable[[], str]:
    def claim() -> str:
        try:
            return runtime.owners.claim("collections", uuid, principal)
        except Forbidden as e:
            raise NotCollectionOwner(e.title) from None
    return claim


def list_collections(runtime: Runtime, token_info: dict, per_page: int = 500, start_at: int = 0):
    principal = _caller(token_info)
    page, more = runtime.collections.list(identity(principal), start_at, per_page)
    link = next_link(runtime.config, {"start_at": start_at + per_page}) if more else None
    return reply({"collections": page}, 206 if more else 200, page_headers("collections", link))


def put(runtime: Runtime, replica: str, uuid: str, version: str, body: dict, token_info: dict):
    principal = _caller(token_info)
    created = runtime.collections.put(uuid, version, Replica(replica), body, body.get("contents"),
                                      _claim(runtime, uuid, principal))
    return reply({"uuid": uuid.lower(), "version": version}, 201 if created else 200)


def get(runtime: Runtime, uuid: str, replica: str, token_info: dict, version: str | None = None):
    principal = _caller(token_info)
    document = runtime.collections.get(uuid, Replica(replica), version)
    if document.get("owner") != identity(principal) and principal.email not in runtime.owners.admin_emails:
        raise NotCollectionOwner(f"Collection {uuid.lower()} belongs to another user")
    return reply(document)


def patch(runtime: Runtime, uuid: str, replica: str, version: str, body: dict, token_info: dict):
    principal = _caller(token_info)
    new = runtime.collections.patch(uuid, Replica(replica), version, body, _claim(runtime, uuid, principal))
    return reply({"uuid": uuid.lower(), "version": new})


def delete(runtime: Runtime, uuid: str, replica: str, token_info: dict):
    principal = _caller(token_info)
    runtime.collections.delete(uuid, Replica(replica), _claim(runtime, uuid, principal), identity(principal))
    return reply({})
