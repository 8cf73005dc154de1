"""What one request may cost before any handler, parser or token check sees it: per-operation body
sizes, a JSON shape check, and a deadline for the response to start. `DSSHeadersMiddleware` applies them.

Body limits (bytes), checked against `Content-Length` before a byte is read and counted again as the body
streams in (a chunked request has no `Content-Length`); over the limit → 413 `request_too_large`:

    PUT    /v1/bundles/{uuid}    10 MiB   API Gateway's own maximum. 20,000 files named like
                                          `sequence_files/lane_1/read_000001_R1.fastq.gz` take 3.3 MB
                                          (165 bytes each), so ~63,000 such files fit.
    PATCH  /v1/bundles/{uuid}     4 MiB   at most 1,000 add_files + 1,000 remove_files, even with 1 KiB names
    POST   /v1/search             1 MiB   Elasticsearch queries are a few KiB; a `terms` list of 20,000 uuids fits
    PUT    /v1/subscriptions    128 KiB   a stored subscription may be 64 KiB; above that the domain's 400
                                          `subscription_too_large` says more than a 413 would
    PUT    /v1/collections        4 MiB   1,000 items with 1 KiB fragments (~1.2 MB), a 64 Ki-character
    PATCH  /v1/collections/{uuid} 4 MiB   description, 64 KiB of details; PATCH: 2 × 1,000 items
    anything else                64 KiB   PUT /files (a URL and a number), DELETE /bundles (a reason), reads

A JSON body (or one without a content type) within its limit is then checked by `dss.jsonlimits`: nesting
over 100 levels, `NaN`/`Infinity`, over-long or overflowing numbers → 400 (`elasticsearch_bad_request` for
/search, as for any query Elasticsearch refuses; `illegal_arguments` elsewhere), so no parser ever recurses
on a hostile body. JSON that is not UTF-8 → 415 `unsupported_media_type`: the parsers after this one decode
by the charset parameter or by sniffing, and must read the very text that was checked.

Deadline: a response must *start* within `REQUEST_DEADLINE` seconds, else 504 `timed_out`, like the
original behind API Gateway (which gives up at 29–30 s; its handlers stopped 5 s early). Streaming a body
after that is not limited (downloads). PUT /v1/files is exempt: bucket sources above
`DSS_ASYNC_COPY_THRESHOLD` answer 202 at once and copy in a workflow, but `file://` sources are still
ingested synchronously at any size (they declare no checksums, and only the descriptor opened for the
request may be read, see `dss.files`), so their time grows with the file's size, and cutting the client off
would only make it retry a copy that is still running. (In the Lambda, `asyncio.run` waits for a
timed-out handler's thread before it returns, so there API Gateway's own limit answers first.)
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Limits", "limits_for", "BodyTooLarge", "read_body", "replay", "run_with_deadline", "REQUEST_DEADLINE"]

logger = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
REQUEST_DEADLINE = 25.0  # seconds until the response starts


@dataclass(frozen=True)
class Limits:
    body: int  # bytes
    deadline: bool = True  # whether REQUEST_DEADLINE applies
    bad_json_code: str = "illegal_arguments"  # the 400 code for a body dss.jsonlimits refuses


DEFAULT = Limits(64 * KiB)
_BUNDLE = re.compile(r"/v1/bundles/[^/]+/?")
_OPERATIONS: tuple[tuple[str, re.Pattern[str], Limits], ...] = (
    ("PUT", _BUNDLE, Limits(10 * MiB)),
    ("PATCH", _BUNDLE, Limits(4 * MiB)),
    ("POST", re.compile(r"/v1/search/?"), Limits(1 * MiB, bad_json_code="elasticsearch_bad_request")),
    ("PUT", re.compile(r"/v1/subscriptions/?"), Limits(128 * KiB)),
    ("PUT", re.compile(r"/v1/collections/?"), Limits(4 * MiB)),
    ("PATCH", re.compile(r"/v1/collections/[^/]+/?"), Limits(4 * MiB)),
    ("PUT", re.compile(r"/v1/files/[^/]+/?"), Limits(64 * KiB, deadline=False)),
)


def limits_for(method: str, path: str) -> Limits:
    for operation_method, pattern, limits in _OPERATIONS:
        if method == operation_method and pattern.fullmatch(path):
            return limits
    return DEFAULT


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client went away; BodyTooLarge as soon as more than
    `limit` bytes have arrived (nothing after that is read)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives `body` once, then whatever the connection says (its disconnect)."""
    pending = True

    async def receive_again() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


_detached: set[asyncio.Task] = set()  # handlers still running after their 504, kept from the collector


async def run_with_deadline(app: ASGIApp, scope: Scope, receive: Receive, send: Send, seconds: float) -> bool:
    """Run `app`; False if it started its response within `seconds`, True if it did not (the caller then
    answers 504, and nothing the app sends afterwards reaches `send`).

    A synchronous handler runs in a worker thread that cannot be interrupted, so the handler is cancelled
    (it stops at its next await) and left to finish in the background with its output dropped; the client
    gets its answer on time either way. Work that can wait long (PUT /bundles waiting for files) bounds
    itself well inside the deadline, so this is the net under the unforeseen, not the plan."""
    started = asyncio.Event()
    expired = False

    async def send_in_time(message: Message) -> None:
        if expired:
            return  # the client already has its 504
        if message["type"] == "http.response.start":
            started.set()
        await send(message)

    task = asyncio.ensure_future(app(scope, receive, send_in_time))
    waiter = asyncio.ensure_future(started.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        waiter.cancel()
    if task.done() or started.is_set():
        await task  # the response is under way: streaming its body has no deadline
        return False
    expired = True
    task.cancel()
    _detached.add(task)
    task.add_done_callback(_finished_late)
    logger.warning("%s %s timed out after %.0f s; its handler finishes in the background", scope["method"],
                   scope["path"], seconds)
    return True


def _finished_late(task: asyncio.Task) -> None:
    _detached.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("A request that timed out failed afterwards", exc_info=task.exception())
