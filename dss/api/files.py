"""HTTP adapters for /files/{uuid}: parse, call dss.files, shape the reply."""
from __future__ import annotations

from dss.api.checkout import check_out_small_json, parse_token, retry_later
from dss.api.responses import absolute, header_value_ok, reply
from dss.auth import require_group
from dss.checkout import Pending
from dss.errors import IllegalArguments
from dss.files import FileMetadata
from dss.identifiers import Replica
from dss.runtime import Runtime

__all__ = ["head", "get", "put"]

_HEADER_FIELDS = (("X-DSS-CREATOR-UID", "creator_uid"), ("X-DSS-VERSION", "version"),
                  ("X-DSS-CONTENT-TYPE", "content-type"), ("X-DSS-SIZE", "size"), ("X-DSS-CRC32C", "crc32c"),
                  ("X-DSS-S3-ETAG", "s3-etag"), ("X-DSS-SHA1", "sha1"), ("X-DSS-SHA256", "sha256"))


def file_headers(metadata: FileMetadata) -> dict[str, str]:
    return {header: str(metadata[field]) for header, field in _HEADER_FIELDS}


def head(runtime: Runtime, uuid: str, replica: str, version: str | None = None):
    metadata = runtime.files.metadata(uuid, Replica(replica), version)
    return reply(None, 200, file_headers(metadata))


def get(runtime: Runtime, uuid: str, replica: str, version: str | None = None, token: str | None = None,
        directurl: bool = False, content_disposition: str | None = None):
    parsed = parse_token(token)
    if content_disposition is not None:
        _check_content_disposition(content_disposition)
    metadata = runtime.files.metadata(uuid, Replica(replica), version)
    outcome = runtime.checkout.file(Replica(replica), metadata, parsed)  # served from the checkout store
    if isinstance(outcome, Pending):
        return retry_later(runtime, outcome.token)
    url = runtime.checkout.url(outcome, None, runtime.config.signed_url_ttl, direct=directurl,
                               content_disposition=None if directurl else content_disposition)
    return reply(None, 302, {"Location": absolute(runtime.config, url), **file_headers(metadata)})


def put(runtime: Runtime, uuid: str, version: str, body: dict, token_info: dict):
    require_group(token_info["principal"], {"hca"})
    runtime.owners.claim("files", uuid, token_info["principal"])
    result = runtime.files.put(uuid, version, body["source_url"], body["creator_uid"])
    if result.task_id is not None:  # copied in the background: HEAD answers 404 until done, 422 if it fails
        return reply({"task_id": result.task_id, "version": result.version}, 202)
    check_out_small_json(runtime, uuid, result.version)
    return reply({"version": result.version}, 201 if result.created else 200)


def _check_content_disposition(value: str) -> None:
    # Sent back on every download, so it must be a valid header value. Non-ASCII file names travel as
    # RFC 6266 `filename*=UTF-8''…`, which is ASCII.
    if not header_value_ok(value):
        raise IllegalArguments("content_disposition must be printable ISO-8859-1 text, without line breaks; "
                               "use filename*=UTF-8''… for other characters")
