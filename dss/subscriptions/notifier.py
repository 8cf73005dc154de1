"""From a bundle event to queued notifications: match subscriptions, build payloads, enqueue deliveries.

The index handler calls :meth:`Notifier.notify` once per indexed bundle version (CREATE) and once per
newly tombstoned version (TOMBSTONE). Each delivery's ``event_id`` is ``<uuid>.<version>:<event type>``
and its ``transaction_id`` is derived from that and the subscription, so a handler that runs twice for
the same event enqueues nothing new (the delivery store keeps one delivery per subscription and event)
and a receiver that sees a retried request sees the same transaction id.

Payloads follow the original DSS. jmespath subscriptions (its "v2"): ``transaction_id``,
``subscription_id``, ``event_type``, ``match``, ``bundle_url``, ``dss_api``, ``event_timestamp``,
``jmespath_query`` (if set) and ``attachments`` (if defined, CREATE only). Elasticsearch subscriptions
("v1"): ``transaction_id``, ``subscription_id``, ``es_query``, ``match`` and ``attachments`` (if defined),
nothing more (a tombstone's document has `admin_deleted`, for an attachment to tell it apart).
"""
from __future__ import annotations

import enum
import json
import logging
import urllib.parse
import uuid as uuidlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jmespath

from dss.identifiers import new_version
from dss.notify import Delivery, DeliveryQueue
from dss.subscriptions.model import Subscription, SubscriptionType

if TYPE_CHECKING:
    from dss.subscriptions import SubscriptionService

__all__ = ["Notifier", "EventType", "ATTACHMENTS_LIMIT", "evaluate_attachments"]

logger = logging.getLogger(__name__)

ATTACHMENTS_LIMIT = 128 * 1024  # bytes of serialised attachments per notification
# Fixed, so that transaction ids are the same in every process and across restarts.
_TRANSACTION_NAMESPACE = uuidlib.UUID("6d1d5c9e-4f0b-4d7e-9a63-3d0a0f6f2b51")


class EventType(enum.StrEnum):
    CREATE = "CREATE"
    TOMBSTONE = "TOMBSTONE"
    DELETE = "DELETE"


def evaluate_attachments(definitions: Mapping[str, Mapping[str, str]], document: Any) -> dict[str, Any]:
    """Each named JMESPath expression on ``document``; failures are reported under ``_errors`` by name,
    and a result over :data:`ATTACHMENTS_LIMIT` is replaced by a single ``_errors`` message."""
    attachments: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, definition in definitions.items():
        try:
            attachments[name] = jmespath.search(definition["expression"], document)
        except Exception as e:  # noqa: BLE001 - a subscriber's expression must not stop its notification
            errors[name] = str(e)
    if errors:
        attachments["_errors"] = errors
    size = len(json.dumps(attachments).encode())
    if size > ATTACHMENTS_LIMIT:
        return {"_errors": f"Attachments too large ({size} > {ATTACHMENTS_LIMIT})"}
    return attachments


class Notifier:
    def __init__(self, subscriptions: SubscriptionService, deliveries: DeliveryQueue, *, api_base: str) -> None:
        self._subscriptions = subscriptions
        self._deliveries = deliveries
        self._api_base = api_base.rstrip("/")

    def notify(self, replica: str, bundle_uuid: str, bundle_version: str, event_type: str,
               document: Mapping[str, Any]) -> int:
        """Queue a notification for every subscription of ``replica`` that ``document`` matches; returns
        how many. Store errors propagate (the event is retried, and what was queued is not queued twice)."""
        event = EventType(event_type)
        event_id = f"{bundle_uuid}.{bundle_version}:{event.value}"
        queued = 0
        for subscription in self._subscriptions.matching(replica, document):
            delivery = self._delivery(subscription, replica, bundle_uuid, bundle_version, event, event_id, document)
            if delivery is not None:
                self._deliveries.enqueue(delivery)
                queued += 1
        if queued:
            logger.info("Queued %d notifications for %s of bundle %s.%s in %s", queued, event.value, bundle_uuid,
                        bundle_version, replica)
        return queued

    def _delivery(self, subscription: Subscription, replica: str, bundle_uuid: str, bundle_version: str,
                  event: EventType, event_id: str, document: Mapping[str, Any]) -> Delivery | None:
        transaction_id = str(uuidlib.uuid5(_TRANSACTION_NAMESPACE, f"{subscription.uuid}:{event_id}"))
        match = {"bundle_uuid": bundle_uuid, "bundle_version": bundle_version}
        if subscription.subscription_type is SubscriptionType.elasticsearch:
            payload = self._es_payload(subscription, transaction_id, event, match, document)
        else:
            payload = self._jmespath_payload(subscription, transaction_id, event, match, replica, document)
        try:
            return subscription.delivery(payload, event_id=event_id)
        except (ValueError, TypeError) as e:
            # Validated at creation, so only a record changed behind our back gets here; skip that one.
            logger.error("Cannot notify subscription %s: %s", subscription.uuid, e)
            return None

    @staticmethod
    def _es_payload(subscription: Subscription, transaction_id: str, event: EventType, match: dict[str, str],
                    document: Mapping[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"transaction_id": transaction_id, "subscription_id": subscription.uuid,
                                   "es_query": subscription.es_query, "match": match}
        if subscription.attachments:
            payload["attachments"] = evaluate_attachments(subscription.attachments, document)
        return payload

    def _jmespath_payload(self, subscription: Subscription, transaction_id: str, event: EventType,
                          match: dict[str, str], replica: str, document: Mapping[str, Any]) -> dict[str, Any]:
        query = urllib.parse.urlencode({"version": match["bundle_version"], "replica": replica})
        payload: dict[str, Any] = {
            "transaction_id": transaction_id, "subscription_id": subscription.uuid, "event_type": event.value,
            "match": match, "bundle_url": f"{self._api_base}/v1/bundles/{match['bundle_uuid']}?{query}",
            "dss_api": self._api_base, "event_timestamp": new_version(),
        }
        if subscription.jmespath_query:
            payload["jmespath_query"] = subscription.jmespath_query
        if subscription.attachments and event is EventType.CREATE:
            payload["attachments"] = evaluate_attachments(subscription.attachments, document)
        return payload
