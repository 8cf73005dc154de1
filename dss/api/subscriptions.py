"""HTTP adapters for /subscriptions: parse, call dss.subscriptions, shape the reply.

Every operation needs group `hca` or `public` (403 `Forbidden` otherwise) and the token's e-mail
(401 `Unauthorized` without one), which is the owner: callers only ever see their own subscriptions.
"""
from __future__ import annotations

from dss.api.responses import reply
from dss.auth import require_email, require_group
from dss.identifiers import new_version
from dss.runtime import Runtime

__all__ = ["find", "put", "get", "delete", "deliveries"]

_GROUPS = frozenset({"hca", "public"})


def _owner(token_info: dict) -> str:
    principal = token_info["principal"]
    require_group(principal, _GROUPS)
    return require_email(principal)


def find(runtime: Runtime, replica: str, token_info: dict, subscription_type: str = "jmespath"):
    found = runtime.subscriptions.find(replica, _owner(token_info), subscription_type)
    return reply({"subscriptions": found})


def put(runtime: Runtime, replica: str, body: dict, token_info: dict):
    # The secret is write-only: the stored subscription is returned without it, for both kinds.
    return reply(runtime.subscriptions.put(replica, _owner(token_info), body), 201)


def get(runtime: Runtime, uuid: str, replica: str, token_info: dict, subscription_type: str = "jmespath"):
    return reply(runtime.subscriptions.get(replica, _owner(token_info), uuid, subscription_type))


def delete(runtime: Runtime, uuid: str, replica: str, token_info: dict, subscription_type: str = "jmespath"):
    runtime.subscriptions.delete(replica, _owner(token_info), uuid, subscription_type)
    return reply({"timeDeleted": new_version()})


def deliveries(runtime: Runtime, uuid: str, replica: str, token_info: dict, subscription_type: str = "jmespath",
               per_page: int = 100, state: str | None = None):
    owner = _owner(token_info)
    subscription = runtime.subscriptions.get(replica, owner, uuid, subscription_type)  # 404/403 unless owned
    records = runtime.deliveries.deliveries(subscription["uuid"], owner=owner, limit=per_page, state=state)
    return reply({"deliveries": [record.to_json() for record in records]})
