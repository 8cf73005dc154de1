"""A real webhook receiver for tests: a threaded `http.server` on a free loopback port.

It records every request (method, path, headers, body) and can be told to fail the next N requests
with a status (500 by default) or by dropping the connection without an answer, to answer slowly, to
answer with another status (e.g. a redirect), or to go down and come back up on the same port.

Use it as a context manager (``with Receiver() as r: ...``) or through the ``receiver`` fixture. For HTTPS,
pass the server context from :func:`self_signed_tls`.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
from requests.structures import CaseInsensitiveDict
from requests_http_signature import HTTPSignatureAuth

__all__ = ["Receiver", "RecordedRequest", "receiver", "self_signed_tls", "verify_cavage"]

FailMode = Literal["status", "drop"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    header_lines: tuple[tuple[str, str], ...]
    body: bytes
    received_at: float
    answered: int | None  # the status sent back; None when the connection was dropped
    headers: CaseInsensitiveDict[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", CaseInsensitiveDict(dict(self.header_lines)))

    @property
    def url(self) -> str:
        """The absolute URL the client asked for, rebuilt from ``Host`` as a server would."""
        return f"http://{self.headers['Host']}{self.path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.receiver._respond(self, body)

    do_POST = do_PUT = do_GET = do_PATCH = do_DELETE = _handle  # noqa: N815 - http.server's naming

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    receiver: Receiver

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that time out or hang up mid-request are part of the tests, not errors.
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class Receiver:
    """A programmable HTTP endpoint on ``127.0.0.1``; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self.status = 200
        self.response_headers: dict[str, str] = {}
        self.delay = 0.0
        self._fail_remaining = 0
        self._fail_mode: FailMode = "status"
        self._fail_status = 500
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Receiver:
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def down(self) -> None:
        """Stop listening (connections are refused) but keep the port for :meth:`up`."""
        self.stop()

    def up(self) -> None:
        self.start()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- programming -------------------------------------------------------------------------------

    def url(self, path: str = "/hook") -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    def fail(self, times: int, *, mode: FailMode = "status", status: int = 500) -> None:
        """Fail the next ``times`` requests, answering ``status`` or dropping the connection."""
        with self._cond:
            self._fail_remaining, self._fail_mode, self._fail_status = times, mode, status

    # -- observation -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests arrived; fail the test if they do not in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver got {len(self._requests)} requests, expected {count}")
                self._cond.wait(left)
            return list(self._requests)

    # -- serving -----------------------------------------------------------------------------------

    def _decide(self) -> int | None:
        with self._cond:
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                return None if self._fail_mode == "drop" else self._fail_status
            return self.status

    def _respond(self, handler: _Handler, body: bytes) -> None:
        answer = self._decide()
        if self.delay:
            time.sleep(self.delay)
        self._record(handler, body, answer)
        if answer is None:
            handler.close_connection = True  # no response at all: the client sees a dropped connection
            return
        handler.send_response(answer)
        for name, value in self.response_headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")

    def _record(self, handler: _Handler, body: bytes, answer: int | None) -> None:
        recorded = RecordedRequest(handler.command, handler.path, tuple(handler.headers.items()), body,
                                   time.time(), answer)
        with self._cond:
            self._requests.append(recorded)
            self._cond.notify_all()


def self_signed_tls(directory: Path, hostname: str) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for ``hostname``, and the certificate's path
    (for clients to trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def verify_cavage(request: RecordedRequest, secret: str, key_id: str | None = None) -> None:
    """Receiver-side check with requests-http-signature 0.1.0 (raises on failure), not our own code.

    That verifier checks the signature over the listed headers only, so a receiver must also compare
    ``Digest`` with the body it got; this does so, as such a receiver would."""
    message = SimpleNamespace(method=request.method, url=request.url, headers=CaseInsensitiveDict(request.headers))

    def key_resolver(key_id: str, algorithm: str) -> bytes:
        assert algorithm == "hmac-sha256"
        assert expected_key_id is None or key_id == expected_key_id
        return secret.encode()

    expected_key_id = key_id
    HTTPSignatureAuth.verify(message, key_resolver=key_resolver)
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    assert message.headers["Digest"] == digest, "Digest does not match the body"
