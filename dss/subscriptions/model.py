"""The subscription value: validated once from a request, stored as a record, shown without its secret.

A subscription is immutable once created (the API has no update), which is what lets the service keep
copies of it in a cache without invalidation per field. Optional fields are kept exactly as submitted
(absent stays absent) because clients compare what they read back with what they sent; defaults are
applied only when a notification is built (:meth:`Subscription.delivery`).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jmespath.exceptions import JMESPathError

from dss.errors import IllegalArguments, InvalidRequest
from dss.notify import Delivery, Secret
from dss.subscriptions.limits import MAX_SUBSCRIPTION_SIZE, ExpressionTooComplex, compile_expression, serialised_size

__all__ = [
    "Subscription", "SubscriptionType", "InvalidJMESPath", "InvalidAttachmentName", "InvalidAttachmentExpression",
    "SubscriptionTooLarge", "OPTIONAL_FIELDS",
]

# Request fields stored as given, in the order the API shows them.
OPTIONAL_FIELDS = ("es_query", "jmespath_query", "method", "encoding", "form_fields", "payload_form_field",
                   "hmac_key_id", "signature_format", "attachments")


class InvalidJMESPath(InvalidRequest):
    code = "invalid_jmespath"


class InvalidAttachmentName(InvalidRequest):
    code = "invalid_attachment_name"


class InvalidAttachmentExpression(InvalidRequest):
    code = "invalid_attachment_expression"


class SubscriptionType(enum.StrEnum):
    jmespath = "jmespath"
    elasticsearch = "elasticsearch"


class SubscriptionTooLarge(InvalidRequest):
    code = "subscription_too_large"


def _compile(expression: Any, error: type[InvalidRequest], what: str) -> None:
    if not isinstance(expression, str):
        raise error(f"{what} must be a string")
    try:
        compile_expression(expression)
    except ExpressionTooComplex as e:
        raise error(f"{what} {e}") from None
    except JMESPathError as e:
        raise error(f"{what} is not valid JMESPath: {e}") from None


def _check_attachments(attachments: Any) -> None:
    if not isinstance(attachments, Mapping):
        raise IllegalArguments("attachments must be an object")
    for name, definition in attachments.items():
        # `_errors` (and anything else starting with `_`) is where evaluation problems are reported.
        if name.startswith("_"):
            raise InvalidAttachmentName(f"Attachment names must not start with an underscore: {name!r}")
        if not isinstance(definition, Mapping) or definition.get("type") != "jmespath":
            raise InvalidAttachmentExpression(f"Attachment {name!r} must be {{'type': 'jmespath', 'expression': …}}")
        _compile(definition.get("expression"), InvalidAttachmentExpression, f"The expression of attachment {name!r}")


@dataclass(frozen=True)
class Subscription:
    uuid: str
    owner: str
    replica: str
    subscription_type: SubscriptionType
    callback_url: str
    es_query: Mapping[str, Any] | None = None
    jmespath_query: str | None = None
    method: str | None = None
    encoding: str | None = None
    form_fields: Mapping[str, str] | None = None
    payload_form_field: str | None = None
    hmac_key_id: str | None = None
    signature_format: str | None = None
    attachments: Mapping[str, Mapping[str, str]] | None = None
    # Write-only: kept to sign notifications, never shown (a Secret does not print itself).
    hmac_secret_key: Secret | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_request(cls, uuid: str, owner: str, replica: str, body: Mapping[str, Any]) -> Subscription:
        """Validate a PUT body. Elasticsearch iff ``es_query`` is truthy; its ``jmespath_query``, if any, is
        ignored (the original stored only the fields of the subscription's own kind)."""
        kind = SubscriptionType.elasticsearch if body.get("es_query") else SubscriptionType.jmespath
        fields = {name: body[name] for name in OPTIONAL_FIELDS if body.get(name) is not None}
        fields.pop("jmespath_query" if kind is SubscriptionType.elasticsearch else "es_query", None)
        if fields.get("jmespath_query"):
            _compile(fields["jmespath_query"], InvalidJMESPath, "The jmespath_query")
        if "attachments" in fields:
            _check_attachments(fields["attachments"])
        if not isinstance(body.get("callback_url"), str):
            raise IllegalArguments("callback_url is required")
        secret = body.get("hmac_secret_key")
        if secret is not None and not isinstance(secret, str):
            raise IllegalArguments("hmac_secret_key must be a string")
        subscription = cls(uuid=uuid, owner=owner, replica=replica, subscription_type=kind,
                           callback_url=body["callback_url"], hmac_secret_key=Secret(secret) if secret else None,
                           **fields)
        subscription._check_deliverable()
        size = serialised_size(subscription.to_record())
        if size > MAX_SUBSCRIPTION_SIZE:
            raise SubscriptionTooLarge(f"The subscription is {size} bytes as stored; at most {MAX_SUBSCRIPTION_SIZE} "
                                       "are allowed (query, attachments, form fields and URL together)")
        return subscription

    def _check_deliverable(self) -> None:
        # Building a delivery validates method, encoding, signature format and key id exactly as the
        # notifier will: better to refuse now than to fail every notification later.
        try:
            self.delivery({}, event_id="validation")
        except (ValueError, TypeError, AttributeError) as e:
            raise IllegalArguments(f"Invalid subscription: {e}") from None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Subscription:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        values["subscription_type"] = SubscriptionType(record["subscription_type"])
        secret = record.get("hmac_secret_key")
        values["hmac_secret_key"] = Secret(secret) if secret else None
        return cls(**values)

    def to_api(self) -> dict[str, Any]:
        """The subscription as clients see it: flat, without the secret or internal fields."""
        shown = {"uuid": self.uuid, "owner": self.owner, "replica": self.replica, "callback_url": self.callback_url}
        shown.update({name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None})
        return shown

    def to_record(self) -> dict[str, Any]:
        """What the table stores: everything, the secret included (it is needed to sign)."""
        record = {**self.to_api(), "subscription_type": self.subscription_type.value}
        if self.hmac_secret_key is not None:
            record["hmac_secret_key"] = self.hmac_secret_key.reveal().decode()
        return record

    def delivery(self, payload: Mapping[str, Any], *, event_id: str) -> Delivery:
        """The notification of ``payload`` to this subscriber, with the defaults for unset fields."""
        return Delivery(
            subscription_id=self.uuid, owner=self.owner, callback_url=self.callback_url, payload=payload,
            method=self.method or "POST", encoding=self.encoding or "application/json",  # type: ignore[arg-type]
            form_fields=self.form_fields or {}, payload_form_field=self.payload_form_field or "payload",
            hmac_secret_key=self.hmac_secret_key, hmac_key_id=self.hmac_key_id,
            signature_format=self.signature_format or "cavage", event_id=event_id)  # type: ignore[arg-type]
