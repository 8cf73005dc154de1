"""ASGI middleware around the whole API: repeated query parameters, read-only mode, the limits of
`dss.api.limits` (body size and shape, response deadline), and the headers every response carries
(Retry-After on retryable 5xx, HSTS). CORS is `dss.api.cors`, configured by DSS_CORS_ORIGINS."""
from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dss.api.limits import (
    REQUEST_DEADLINE,
    BodyTooLarge,
    Limits,
    limits_for,
    read_body,
    replay,
    run_with_deadline,
)
from dss.jsonlimits import UnsafeJSON, check_json

__all__ = ["DSSHeadersMiddleware"]

# urllib3's idempotent methods: the hca client retries these on 5xx, and honours Retry-After.
_RETRYABLE_METHODS = {"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE"}
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})  # ASCII is UTF-8 or refused by the decoder
_ALWAYS = [(b"strict-transport-security", b"max-age=31536000; includeSubDomains; preload")]


def _first_values(query_string: bytes) -> bytes:
    """Keep the first value of each repeated parameter: pagination clients re-append the original
    query to the server's Link URL, so `?replica=aws&replica=aws` and `?start_at=500&start_at=0` occur."""
    seen: set[str] = set()
    kept = []
    for key, value in urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key not in seen:
            seen.add(key)
            kept.append((key, value))
    return urllib.parse.urlencode(kept).encode("latin-1")


def _is_read(method: str, path: str) -> bool:
    return method in ("GET", "OPTIONS") or (method == "POST" and path.rstrip("/").endswith("/search"))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses these; the byte count still applies
    return None


def _json_charset(scope: Scope) -> str | None:
    """The charset of a JSON body (or of one without a content type, which a parser may take for JSON);
    None for other media types."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            media_type, *parameters = value.decode("latin-1").lower().split(";")
            if media_type.strip() != "application/json" and not media_type.strip().endswith("+json"):
                return None
            charsets = [p.split("=", 1)[1].strip(' "') for p in parameters if p.strip().startswith("charset=")]
            return charsets[0] if charsets else "utf-8"
    return "utf-8"


class DSSHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, read_only: bool = False, deadline: float = REQUEST_DEADLINE) -> None:
        self.app = app
        self.read_only = read_only
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        control = next((c for c in path if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
        if control is not None:  # no route would match it: a 404 on operations that never answer 404
            await _problem(send, 400, "illegal_arguments",
                           f"The path contains the control character U+{ord(control):04X}")
            return
        if scope.get("query_string"):
            scope = dict(scope, query_string=_first_values(scope["query_string"]))
        if self.read_only and not _is_read(method, path) and path.startswith("/v1/"):
            retry_after = b"10" if method in _RETRYABLE_METHODS else b"600"
            await _problem(send, 503, "read_only", "The DSS is currently read-only", [(b"retry-after", retry_after)])
            return
        limits = limits_for(method, path)
        body = await _checked_body(scope, receive, send, limits)
        if body is None:
            return  # refused, or the client went away
        receive = replay(body, receive)
        retryable = method in _RETRYABLE_METHODS or (method == "POST" and "search" in path)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + _ALWAYS
                if message["status"] in (500, 502, 503, 504) and retryable and not any(
                        name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", b"10"))
                message = dict(message, headers=headers)
            await send(message)

        if not limits.deadline:
            await self.app(scope, receive, send_with_headers)
        elif await run_with_deadline(self.app, scope, receive, send_with_headers, self.deadline):
            await _problem(send_with_headers, 504, "timed_out", "Timed out processing request.", extra=False)


async def _checked_body(scope: Scope, receive: Receive, send: Send, limits: Limits) -> bytes | None:
    """The request body within `limits`, or None once the refusal is sent (or the client is gone).

    An oversized body is refused from its Content-Length before a byte is read, else as soon as the count
    passes the limit. The connection stays open: uvicorn discards the rest of the body as it arrives, without
    buffering it, so a client still sending reads its 413 (closing instead would reset the connection, and a
    reset loses the answer)."""
    too_large = (413, "request_too_large", f"The request body is larger than the {limits.body} bytes this "
                 "operation accepts")
    if (_content_length(scope) or 0) > limits.body:
        await _problem(send, *too_large)
        return None
    try:
        body = await read_body(receive, limits.body)
    except BodyTooLarge:
        await _problem(send, *too_large)
        return None
    charset = _json_charset(scope)
    if body and charset is not None:
        # JSON is UTF-8 (RFC 8259). Connexion decodes by the charset parameter and Starlette by sniffing
        # the first bytes (json.detect_encoding); only when both read UTF-8 do they parse the text checked here.
        if charset not in _UTF8 or not json.detect_encoding(body).startswith("utf-8"):
            await _problem(send, 415, "unsupported_media_type", "JSON request bodies must be encoded in UTF-8")
            return None
        try:
            check_json(body)
        except UnsafeJSON as e:
            await _problem(send, 400, limits.bad_json_code, str(e))
            return None
    return body


async def _problem(send: Send, status: int, code: str, title: str, headers: Sequence[tuple[bytes, bytes]] = (),
                   extra: bool = True) -> None:
    """A problem+json response straight from the middleware (`extra`: add the headers every reply carries,
    unless `send` is the wrapper that adds them)."""
    body = json.dumps({"status": status, "code": code, "title": title, "stacktrace": ""}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
        *headers, *(_ALWAYS if extra else [])]})
    await send({"type": "http.response.body", "body": body})
