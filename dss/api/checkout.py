"""HTTP adapters for bundle checkout jobs, and the 301 + Retry-After answer of reads whose checkout runs."""
from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

from connexion.context import request

from dss.api.responses import public_base, reply
from dss.errors import IllegalToken
from dss.identifiers import Replica
from dss.runtime import Runtime

__all__ = ["post", "get", "parse_token", "retry_later", "check_out_small_json"]

logger = logging.getLogger(__name__)


def post(runtime: Runtime, uuid: str, replica: str, version: str | None = None, body: dict | None = None):
    body = body or {}
    manifest = runtime.bundles.get(uuid, Replica(replica), version)  # 404 for a missing or deleted bundle
    job_id = runtime.checkout.start_bundle(Replica(replica), uuid.lower(), manifest["version"],
                                           body.get("destination"), body.get("email"))
    return reply({"checkout_job_id": job_id})


def get(runtime: Runtime, checkout_job_id: str, replica: str):
    return reply(runtime.checkout.job_status(Replica(replica), checkout_job_id.lower()))


def parse_token(token: str | None) -> dict[str, Any] | None:
    """The retry token of a 301 (`{execution_id, start_time, attempts}`); 400 `illegal_token` if malformed."""
    if token is None:
        return None
    try:
        parsed = json.loads(token)
    except ValueError:
        raise IllegalToken("Could not parse the token parameter") from None
    if not isinstance(parsed, dict) or "attempts" not in parsed:
        raise IllegalToken("The token parameter lacks 'attempts'")
    return parsed


def retry_later(runtime: Runtime, token: dict[str, Any]):
    """301 to the request's own URL with `token` set, and Retry-After: the checkout is still running."""
    url = request.url
    query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True) if k != "token"]
    query.append(("token", json.dumps(token, separators=(",", ":"))))
    location = f"{public_base(runtime.config)}{url.path}?{urllib.parse.urlencode(query)}"
    return reply(None, 301, {"Location": location, "Retry-After": str(runtime.config.checkout_retry_after)})


def check_out_small_json(runtime: Runtime, uuid: str, version: str) -> None:
    """Start the eager checkout of a file version just registered, if it is a small JSON file. Never
    fails the registration: a read would start the checkout anyway."""
    try:
        for replica in runtime.replicas:
            metadata = runtime.files.lookup(replica, uuid.lower(), version)
            if metadata is not None:
                runtime.checkout.eager(replica, metadata)
                return
    except Exception:  # noqa: BLE001 - the file is registered; its checkout is only an optimisation
        logger.warning("Could not start the eager checkout of %s.%s", uuid, version, exc_info=True)
