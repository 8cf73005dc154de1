"""HTTP adapters for /events: the replica's events journal (dss.journal)."""
from __future__ import annotations

from dss.api.responses import absolute, next_link, page_headers, reply
from dss.errors import NotFound
from dss.identifiers import Replica, normalise_uuid, validate_version
from dss.runtime import Runtime

__all__ = ["list_events", "get"]


def list_events(runtime: Runtime, replica: str, from_date: str | None = None, to_date: str | None = None,
                per_page: int = 1, token: str | None = None):
    journal = runtime.journals[Replica(replica)]
    journals, next_token = journal.page(from_date, to_date, per_page, token)
    ttl = runtime.config.signed_url_ttl
    streams = [{**{k: v for k, v in j.to_json().items() if k not in ("seq", "stream_key")},
                "stream_url": absolute(runtime.config, journal.stream_url(j, ttl))} for j in journals]
    link = next_link(runtime.config, {"token": next_token}) if next_token else None
    return reply({"event_streams": streams}, 206 if link else 200, page_headers("event_streams", link))


def get(runtime: Runtime, uuid: str, version: str, replica: str):
    document = runtime.journals[Replica(replica)].document(normalise_uuid(uuid), validate_version(version))
    if document is None:
        raise NotFound("Cannot find event!")
    return reply(document)
