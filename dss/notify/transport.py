"""One HTTP attempt at a delivery: re-check the callback URL, build and sign the request, send it.

The connection goes to the addresses :func:`~dss.notify.urlsafety.check_callback_url` approved, never to
a fresh DNS answer: urllib3 connections are given those addresses instead of resolving the host again,
while the ``Host`` header, TLS SNI and certificate checks still use the host name. Redirects are not
followed, proxies from the environment are ignored (they would bypass the pinning), and any 2xx status
counts as delivered. Every outcome, including refusals and network errors, becomes an
:class:`AttemptResult`; only programming errors escape.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import create_connection

from dss.notify.delivery import Delivery, build_request
from dss.notify.urlsafety import AllowList, CheckedTarget, Resolver, UnsafeCallbackURL, check_callback_url

__all__ = ["AttemptResult", "Transport", "HttpTransport"]

logger = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt achieved: a 2xx (``delivered``), another status, or an error and no status."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    duration: float = 0.0


class Transport(Protocol):
    """Makes attempt number ``attempt`` (1-based) at ``delivery``. Must not raise for delivery failures."""

    def __call__(self, delivery: Delivery, attempt: int) -> AttemptResult: ...


def _connect_pinned(conn: Any) -> socket.socket:
    """Open a socket to the first approved address that answers (as urllib3 would after DNS)."""
    last: OSError | None = None
    for address in conn.pinned_addresses:
        try:
            return create_connection((address, conn.port), conn.timeout, source_address=conn.source_address,
                                     socket_options=conn.socket_options)
        except TimeoutError as e:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out") from e
        except OSError as e:
            last = e
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}") from last


class _PinnedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, pinned_addresses: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_addresses = pinned_addresses

    def _new_conn(self) -> socket.socket:
        return _connect_pinned(self)


class _PinnedHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, pinned_addresses: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_addresses = pinned_addresses

    def _new_conn(self) -> socket.socket:
        return _connect_pinned(self)


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class _PinnedPoolManager(PoolManager):
    """Pools for exactly one checked host; its connections use the approved addresses."""

    def __init__(self, target: CheckedTarget, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": _PinnedHTTPPool, "https": _PinnedHTTPSPool}
        self._target = target

    def _new_pool(self, scheme: str, host: str, port: int, request_context: Any = None) -> HTTPConnectionPool:
        if host.strip("[]").rstrip(".").lower() != self._target.host:
            # Cannot happen without redirects; refuse rather than connect somewhere unchecked.
            raise requests.exceptions.InvalidURL(f"host {host!r} was not checked")
        pool = super()._new_pool(scheme, host, port, request_context)
        # Pools hand conn_kw to every connection they create (PoolManager keys reject unknown kwargs).
        pool.conn_kw["pinned_addresses"] = self._target.addresses
        return pool


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, target: CheckedTarget) -> None:
        self._target = target  # before super().__init__, which calls init_poolmanager
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _PinnedPoolManager(self._target, num_pools=connections, maxsize=maxsize, block=block,
                                              **pool_kwargs)


def _root_cause(error: BaseException) -> BaseException:
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        nested = error.__cause__ or error.__context__
        if nested is None:
            break
        error = nested
    return error


def describe_error(error: BaseException) -> str:
    """A short, secret-free description: the requests-level type and the underlying cause."""
    root = _root_cause(error)
    text = type(error).__name__
    if root is not error:
        text += f": {type(root).__name__}"
    if str(root):
        text += f": {root}"
    return text[:_MAX_ERROR_CHARS]


class HttpTransport:
    """Real HTTP attempts with ``requests``; ``timeout`` bounds connecting and each read."""

    def __init__(self, *, timeout: float = 60.0, allowlist: AllowList | str | Iterable[str] | None = None,
                 resolver: Resolver | None = None, verify: bool | str = True) -> None:
        self.timeout = timeout
        self.allowlist = AllowList.parse(allowlist)
        self._resolver = resolver
        self._verify = verify

    def __call__(self, delivery: Delivery, attempt: int) -> AttemptResult:
        started = time.monotonic()
        elapsed = lambda: time.monotonic() - started
        try:
            target = check_callback_url(delivery.callback_url, self.allowlist, resolver=self._resolver)
            status = self._send(build_request(delivery, attempt), target)
        except UnsafeCallbackURL as e:
            return AttemptResult(False, None, f"refused: {e.title}", elapsed())
        except requests.RequestException as e:
            return AttemptResult(False, None, describe_error(e), elapsed())
        if 200 <= status < 300:
            return AttemptResult(True, status, None, elapsed())
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        return AttemptResult(False, status, f"HTTP {status}{note}", elapsed())

    def _send(self, request: requests.PreparedRequest, target: CheckedTarget) -> int:
        with requests.Session() as session:
            session.trust_env = False
            adapter = _PinnedAdapter(target)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            # stream=True: the status is all we need; do not download whatever body the receiver sends.
            with session.send(request, timeout=self.timeout, allow_redirects=False, stream=True,
                              verify=self._verify) as response:
                return response.status_code
