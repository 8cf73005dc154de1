"""HTTP adapters for /bundles: parse, call dss.bundles, shape the reply."""
from __future__ import annotations

from dss.api.checkout import parse_token, retry_later
from dss.api.responses import absolute, next_link, page_headers, public_base, reply
from dss.auth import require_admin, require_group
from dss.checkout import Pending
from dss.errors import OnlyOneUrlType
from dss.identifiers import Replica, new_version
from dss.runtime import Runtime

__all__ = ["get", "put", "patch", "delete", "enumerate"]

_API_FIELDS = ("name", "content-type", "size", "uuid", "version", "crc32c", "sha1", "sha256", "indexed")


def _api_file(entry: dict) -> dict:
    shaped = {field: entry[field] for field in _API_FIELDS}
    shaped["s3_etag"] = entry["s3-etag"]  # API responses spell it with an underscore, stored JSON with a hyphen
    return shaped


def get(runtime: Runtime, uuid: str, replica: str, version: str | None = None, directurls: bool = False,
        presignedurls: bool = False, token: str | None = None, per_page: int = 500, start_at: int = 0):
    if directurls and presignedurls:
        raise OnlyOneUrlType("Only one of directurls and presignedurls may be requested")
    manifest = runtime.bundles.get(uuid, Replica(replica), version)
    files = manifest["files"]
    entries = files[start_at:start_at + per_page]
    page = [_api_file(f) for f in entries]
    if directurls or presignedurls:  # served from the bundle's checkout
        outcome = runtime.checkout.bundle(Replica(replica), uuid.lower(), manifest["version"], files,
                                          parse_token(token))
        if isinstance(outcome, Pending):
            return retry_later(runtime, outcome.token)
        for entry, shaped in zip(entries, page):
            url = runtime.checkout.url(outcome, entry["name"], runtime.config.signed_url_ttl, direct=directurls)
            shaped["url"] = url if directurls else absolute(runtime.config, url)
    more = len(files) - start_at > per_page
    link = None
    if more:
        link = next_link(runtime.config, {"start_at": start_at + per_page, "version": manifest["version"]})
    body = {"bundle": {"uuid": uuid.lower(), "version": manifest["version"], "creator_uid": manifest["creator_uid"],
                       "files": page}}
    return reply(body, 206 if more else 200, page_headers("bundle.files", link))


def _may_write(runtime: Runtime, uuid: str, token_info: dict) -> None:
    # The original let any valid token write bundles; here they need group `hca`, as files do, and the
    # bundle's owner or an administrator (dss.auth.ownership).
    require_group(token_info["principal"], {"hca"})
    runtime.owners.claim("bundles", uuid, token_info["principal"])


def put(runtime: Runtime, uuid: str, version: str, replica: str, body: dict, token_info: dict):
    _may_write(runtime, uuid, token_info)
    manifest, created = runtime.bundles.put(uuid, version, Replica(replica), body["files"], body["creator_uid"])
    return reply({"version": manifest["version"], "manifest": manifest}, 201 if created else 200)


def patch(runtime: Runtime, uuid: str, replica: str, version: str, body: dict, token_info: dict):
    require_group(token_info["principal"], {"hca"})
    runtime.bundles.get(uuid, Replica(replica), version)  # 404 before anyone claims an unknown uuid
    _may_write(runtime, uuid, token_info)
    new = runtime.bundles.patch(uuid, version, Replica(replica), body.get("add_files"), body.get("remove_files"))
    return reply({"uuid": uuid.lower(), "version": new})


def delete(runtime: Runtime, uuid: str, replica: str, body: dict, token_info: dict, version: str | None = None):
    email = require_admin(token_info["principal"], runtime.config.admin_emails)
    runtime.bundles.delete(uuid, Replica(replica), version, body["reason"], email)
    return reply({})


def enumerate(runtime: Runtime, replica: str, prefix: str | None = None, per_page: int = 100,  # noqa: A001
              search_after: str | None = None, token: str | None = None):
    prefix = (prefix or "").lower()
    page = runtime.bundles.enumerate(Replica(replica), prefix, per_page, search_after)
    body: dict = {"dss_api": public_base(runtime.config), "object": "list", "per_page": per_page,
                  "search_prefix": f"bundles/{prefix}", "event_timestamp": new_version(),
                  "bundles": page.bundles, "page_count": len(page.bundles), "has_more": page.search_after is not None}
    link = None
    if page.search_after is not None:
        link = next_link(runtime.config, {"search_after": page.search_after, "token": page.search_after})
        body.update(token=page.search_after, search_after=page.search_after, link=link[1:link.index(">")])
    return reply(body, 206 if link else 200, page_headers("bundles", link))
