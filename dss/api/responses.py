"""Shaping replies: JSON bodies with an explicit content type, the public base URL, and RFC 5988
`Link` headers for the next page."""
from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping

from connexion.context import request
from starlette.responses import Response

from dss.config import Config

__all__ = ["reply", "public_base", "absolute", "next_link", "page_headers", "header_value_ok"]


def reply(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A finished JSON response. Handlers return these rather than (body, status) tuples because each
    operation declares two media types (JSON for success, problem+json for errors) and Connexion will
    not choose between them; `None` means an empty body (HEAD, redirects)."""
    content = b"" if body is None else json.dumps(body).encode()
    return Response(content, status_code=status, headers=dict(headers or {}), media_type="application/json")


def public_base(config: Config) -> str:
    """`DSS_API_URL` if set, else the scheme and host the client used."""
    if config.api_url:
        return config.api_url
    url = request.url
    return f"{url.scheme}://{url.netloc}"


def absolute(config: Config, url: str) -> str:
    """Make a root-relative URL (the local store's signed URLs) absolute; absolute URLs pass through."""
    return urllib.parse.urljoin(public_base(config) + "/", url)


def next_link(config: Config, replace: Mapping[str, object], quote: str = "'") -> str:
    """The current request's URL with `replace` substituted into its query, as a Link header value."""
    url = request.url
    query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True) if k not in replace]
    query += [(k, str(v)) for k, v in replace.items() if v is not None]
    target = f"{public_base(config)}{url.path}?{urllib.parse.urlencode(query)}"
    return f"<{target}>; rel={quote}next{quote}"


def page_headers(content_key: str, link: str | None) -> dict[str, str]:
    headers = {"X-OpenAPI-Paginated-Content-Key": content_key, "X-OpenAPI-Pagination": "true" if link else "false"}
    if link:
        headers["Link"] = link
    return headers


# A header value: printable ISO-8859-1 or tab (RFC 9110 field-value). A CR, LF or NUL would break the
# response (or inject a header); a character beyond Latin-1 cannot be sent at all.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")


def header_value_ok(value: str) -> bool:
    """Whether `value` can be sent as an HTTP header value unchanged."""
    return _HEADER_VALUE.fullmatch(value) is not None
