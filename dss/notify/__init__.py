"""Webhook notifications: signed, durable, retried delivery of subscription payloads.

* `dss.notify.delivery` — :class:`Delivery`, the immutable notification value, and the request it becomes.
* `dss.notify.signing` — draft-cavage (default) and RFC 9421 HMAC-SHA256 signatures.
* `dss.notify.urlsafety` — :func:`check_callback_url`: only public addresses unless allow-listed.
* `dss.notify.transport` — one pinned, non-redirecting HTTP attempt → :class:`AttemptResult`.
* `dss.notify.queue` — :class:`DeliveryQueue`: the queue's contract (retries, leases, dead letters, log).
* `dss.notify.store` — :class:`DeliveryStore`: the queue in one SQLite file (the embedded default).
* `dss.notify.dynamodb` — :class:`DynamoDBDeliveryStore`: the queue in a DynamoDB table (the cloud).
* `dss.notify.stores` — :func:`open_delivery_store`: the store the configuration names.
* `dss.notify.worker` — :class:`DeliveryWorker`: background threads draining a store (embedded server).
* `dss.notify.due` — :func:`deliver_due`: drain a store in parallel until a deadline (the notify Lambda).

Errors: :class:`UnsafeCallbackURL` (an `InvalidRequest`, so the API answers 400) when a callback URL is
refused at subscription time; at delivery time refusals and network failures are recorded as failed
attempts, never raised.
"""
from dss.notify.delivery import Delivery, Encoding, Method, Secret, build_request
from dss.notify.due import DeliveryRun, deliver_due
from dss.notify.queue import AttemptRecord, DeliveryQueue, DeliveryRecord
from dss.notify.signing import SignatureFormat, sign_request
from dss.notify.store import DeliveryStore
from dss.notify.stores import open_delivery_store
from dss.notify.transport import AttemptResult, HttpTransport, Transport
from dss.notify.urlsafety import (
    AllowList,
    CheckedTarget,
    UnresolvableCallbackHost,
    UnsafeCallbackURL,
    check_callback_url,
)
from dss.notify.worker import DeliveryWorker

__all__ = [
    "Delivery", "Encoding", "Method", "Secret", "build_request", "SignatureFormat", "sign_request",
    "DeliveryStore", "DeliveryRecord", "AttemptRecord", "AttemptResult", "HttpTransport", "Transport",
    "AllowList", "CheckedTarget", "UnsafeCallbackURL", "UnresolvableCallbackHost", "check_callback_url",
    "DeliveryWorker", "DeliveryQueue", "open_delivery_store", "deliver_due", "DeliveryRun",
]
