"""The notification to deliver, as an immutable value, and the HTTP request it turns into.

A :class:`Delivery` is everything needed to send one notification to one subscriber, and nothing that
needs the subscription store: the store keeps it as JSON (:meth:`Delivery.to_json`) apart from the HMAC
secret, which is kept in its own column and wrapped in :class:`Secret` so no repr or log shows it.
"""
from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from dss.notify.signing import SignatureFormat, check_key_id, sign_request

__all__ = ["Delivery", "Secret", "Method", "Encoding", "build_request", "USER_AGENT", "ATTEMPT_HEADER"]

USER_AGENT = "dss-notify/1"
# Kept from the original DSS so subscribers can tell retries apart; 1 is the first attempt.
ATTEMPT_HEADER = "X-dss-notify-attempt"


class Method(enum.StrEnum):
    POST = "POST"
    PUT = "PUT"


class Encoding(enum.StrEnum):
    json = "application/json"
    multipart = "multipart/form-data"


class Secret:
    """A secret value that does not print itself. Compare with :meth:`__eq__` (constant time)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> Any:
        # Pickling would copy the secret out of sight of the store's rules; nothing needs it.
        raise TypeError("Secret cannot be pickled")


@dataclass(frozen=True)
class Delivery:
    """One notification for one subscription. ``event_id`` (the transaction id) makes enqueueing the same
    event for the same subscription twice a no-op."""

    subscription_id: str
    owner: str
    callback_url: str
    payload: Mapping[str, Any]
    method: Method = Method.POST
    encoding: Encoding = Encoding.json
    form_fields: Mapping[str, str] = field(default_factory=dict)
    payload_form_field: str = "payload"
    hmac_secret_key: Secret | None = field(default=None, repr=False, compare=False)
    hmac_key_id: str | None = None
    signature_format: SignatureFormat = SignatureFormat.cavage
    event_id: str = ""

    def __post_init__(self) -> None:
        # Normalise loosely typed input (strings from JSON) into the enums and wrappers once, here.
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("method", Method(self.method.upper()))
        set_("encoding", Encoding(self.encoding))
        set_("signature_format", SignatureFormat(self.signature_format))
        if self.hmac_secret_key is not None and not isinstance(self.hmac_secret_key, Secret):
            set_("hmac_secret_key", Secret(self.hmac_secret_key))
        if not self.hmac_secret_key or not self.hmac_secret_key.reveal():
            set_("hmac_secret_key", None)
        set_("payload", json.loads(json.dumps(self.payload)))  # a private, JSON-clean copy
        set_("form_fields", {str(k): str(v) for k, v in dict(self.form_fields).items()})
        if not self.event_id:
            set_("event_id", str(self.payload.get("transaction_id") or uuid.uuid4()))
        check_key_id(self.key_id)  # refuse at enqueue time rather than fail every attempt

    @property
    def key_id(self) -> str:
        return self.hmac_key_id or f"hca-dss:{self.subscription_id}"

    @property
    def signed(self) -> bool:
        return self.hmac_secret_key is not None

    def to_json(self) -> dict[str, Any]:
        """Everything but the secret, as JSON-ready values."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hmac_secret_key"}
        return {k: v.value if isinstance(v, enum.Enum) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], secret: str | bytes | None = None) -> Delivery:
        names = {f.name for f in dataclasses.fields(cls)} - {"hmac_secret_key"}
        return cls(**{k: v for k, v in data.items() if k in names}, hmac_secret_key=secret)  # type: ignore[arg-type]


def _body_arguments(delivery: Delivery) -> dict[str, Any]:
    payload = json.dumps(delivery.payload)
    if delivery.encoding is Encoding.multipart:
        # The subscription's form fields, plus the JSON payload as a part of its own.
        files = {delivery.payload_form_field: (None, payload, Encoding.json.value)}
        return {"data": dict(delivery.form_fields), "files": files}
    return {"data": payload.encode(), "headers": {"Content-Type": Encoding.json.value}}


def build_request(delivery: Delivery, attempt: int, *, now: float | None = None) -> requests.PreparedRequest:
    """The exact request for attempt number ``attempt`` (1-based), signed if the subscription has a secret.

    Signing happens after preparation so it covers the bytes and URL that go on the wire (the multipart
    boundary is random, and requests normalises the URL)."""
    arguments = _body_arguments(delivery)
    headers = {"User-Agent": USER_AGENT, ATTEMPT_HEADER: str(attempt), **arguments.pop("headers", {})}
    prepared = requests.Request(delivery.method.value, delivery.callback_url, headers=headers,
                                **arguments).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    if delivery.hmac_secret_key is not None:
        added = sign_request(prepared.method or delivery.method.value, prepared.url or delivery.callback_url,
                             prepared.headers, body, secret=delivery.hmac_secret_key.reveal(),
                             key_id=delivery.key_id, signature_format=delivery.signature_format, now=now)
        prepared.headers.update(added)
    return prepared
