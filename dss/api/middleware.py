"""ASGI middleware around the whole API: repeated query parameters, read-only mode, and the
headers every response carries (Retry-After on retryable 5xx, HSTS, CORS)."""
from __future__ import annotations

import json
import urllib.parse

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DSSHeadersMiddleware"]

# urllib3's idempotent methods: the hca client retries these on 5xx, and honours Retry-After.
_RETRYABLE_METHODS = {"HEAD", "GET", "PUT", "DELETE", "OPTIONS", "TRACE"}
_ALWAYS = [(b"strict-transport-security", b"max-age=31536000; includeSubDomains; preload"),
           (b"access-control-allow-origin", b"*")]


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


class DSSHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, read_only: bool = False) -> None:
        self.app = app
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if scope.get("query_string"):
            scope = dict(scope, query_string=_first_values(scope["query_string"]))
        if self.read_only and not _is_read(method, path) and path.startswith("/v1/"):
            await self._read_only(method, send)
            return
        retryable = method in _RETRYABLE_METHODS or (method == "POST" and "search" in path)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + _ALWAYS
                if message["status"] in (500, 502, 503, 504) and retryable and not any(
                        name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", b"10"))
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _read_only(method: str, send: Send) -> None:
        body = json.dumps({"status": 503, "code": "read_only", "title": "The DSS is currently read-only",
                           "stacktrace": ""}).encode()
        retry_after = b"10" if method in ("PUT", "DELETE") else b"600"
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", retry_after), *_ALWAYS]})
        await send({"type": "http.response.body", "body": body})
