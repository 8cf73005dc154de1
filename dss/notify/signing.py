"""Signatures on outgoing notification requests, HMAC-SHA256 with a per-subscription shared secret.

Two formats, chosen per subscription:

* ``cavage`` (the default): draft-cavage HTTP Signatures exactly as `requests-http-signature` 0.1.0 makes
  them, because that is what existing subscribers verify. It adds ``Date`` (if absent), ``Digest`` (when
  there is a body) and ``Authorization: Signature keyId=…,algorithm="hmac-sha256",headers="date digest",
  signature=…``. The signed string is the lower-cased ``name: value`` lines of the listed headers. It does
  not cover the method or URL, and the 0.1.0 verifier does not compare ``Digest`` with the body: receivers
  must do that themselves.
* ``rfc9421``: HTTP Message Signatures (RFC 9421) with ``Content-Digest`` (RFC 9530), made by the
  `http-message-signatures` library. It covers the method, authority, path, query, content type and body
  digest, and carries ``created``, ``keyid``, ``alg`` and ``tag`` parameters.

Each signer returns the headers it adds; it never changes the caller's mapping.
"""
from __future__ import annotations

import base64
import datetime
import email.utils
import enum
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from requests.structures import CaseInsensitiveDict

__all__ = [
    "SignatureFormat", "sign_request", "check_key_id", "sign_cavage", "sign_rfc9421", "RFC9421_COMPONENTS",
    "RFC9421_LABEL", "RFC9421_TAG",
]

# Authority + path + query rather than @target-uri: a receiver behind a TLS-terminating proxy cannot
# always tell which scheme we used, but it always knows the Host it was asked for.
RFC9421_COMPONENTS = ("@method", "@authority", "@path", "@query", "content-type", "content-digest")
RFC9421_LABEL = "dss"
# A signed application tag lets receivers pick our signature if a proxy adds its own.
RFC9421_TAG = "hca-dss-notify"


class SignatureFormat(enum.StrEnum):
    cavage = "cavage"
    rfc9421 = "rfc9421"


def check_key_id(key_id: str) -> None:
    """Raise ValueError unless ``key_id`` can be carried safely by both signature formats."""
    # The cavage verifier splits the Authorization header on ',' and strips '"', so either character (or
    # anything non-printable, which could inject a header) would corrupt or forge the parameter list.
    if not key_id or not key_id.isascii() or not key_id.isprintable() or any(c in key_id for c in '",\\'):
        raise ValueError("HMAC key id must be printable ASCII without quotes, commas or backslashes")


def sign_cavage(method: str, url: str, headers: Mapping[str, str], body: bytes | None, *,
                secret: bytes, key_id: str, now: float | None = None) -> dict[str, str]:
    """Headers for a draft-cavage ``hmac-sha256`` signature over ``date`` (and ``digest`` with a body)."""
    check_key_id(key_id)
    existing = CaseInsensitiveDict(headers)
    added: dict[str, str] = {}
    if "Date" not in existing:
        added["Date"] = email.utils.formatdate(time.time() if now is None else now, usegmt=True)
    signed = ["date"]
    if body is not None:
        added["Digest"] = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
        signed.append("digest")
    existing.update(added)
    string_to_sign = "\n".join(f"{name}: {existing[name]}" for name in signed).encode()
    signature = base64.b64encode(hmac.new(secret, string_to_sign, hashlib.sha256).digest()).decode()
    params = [("keyId", key_id), ("algorithm", "hmac-sha256"), ("headers", " ".join(signed)),
              ("signature", signature)]
    added["Authorization"] = "Signature " + ",".join(f'{name}="{value}"' for name, value in params)
    return added


class _Message:
    """The minimal request shape the http-message-signatures resolver reads (method, url, headers)."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method = method.upper()
        self.url = url
        self.headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(headers)


def sign_rfc9421(method: str, url: str, headers: Mapping[str, str], body: bytes | None, *,
                 secret: bytes, key_id: str, now: float | None = None) -> dict[str, str]:
    """Headers for an RFC 9421 ``hmac-sha256`` signature (``Content-Digest``, ``Signature-Input``,
    ``Signature``). ``url`` must be the encoded URL that is actually sent."""
    check_key_id(key_id)
    message = _Message(method, url, headers)
    covered = [c for c in RFC9421_COMPONENTS
               if c.startswith("@") or c in message.headers or (c == "content-digest" and body is not None)]
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                               key_resolver=MappingKeyResolver(public_keys={}, private_keys={key_id: secret}))
    created = datetime.datetime.fromtimestamp(time.time() if now is None else now, tz=datetime.UTC)
    signer.sign(message, key_id=key_id, created=created, label=RFC9421_LABEL, tag=RFC9421_TAG,
                covered_component_ids=covered, body=body, use_existing_digest="content-digest" in message.headers)
    before = CaseInsensitiveDict(headers)
    return {name: value for name, value in message.headers.items() if before.get(name) != value}


_SIGNERS: dict[SignatureFormat, Callable[..., dict[str, str]]] = {
    SignatureFormat.cavage: sign_cavage,
    SignatureFormat.rfc9421: sign_rfc9421,
}


def sign_request(method: str, url: str, headers: Mapping[str, str], body: bytes | None, *, secret: bytes,
                 key_id: str, signature_format: SignatureFormat = SignatureFormat.cavage,
                 now: float | None = None) -> dict[str, str]:
    """The headers to add to a request to sign it in ``signature_format``."""
    signer = _SIGNERS[SignatureFormat(signature_format)]
    return signer(method, url, headers, body, secret=secret, key_id=key_id, now=now)
