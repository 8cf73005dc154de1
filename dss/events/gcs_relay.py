"""The GCS event relay: object notifications of the `gcp` replica's bucket (Pub/Sub) → the event bus.

S3 tells the bus about objects written behind the server's back through S3 → SNS; GCS does it through a
bucket notification (`JSON_API_V1` payload, events `OBJECT_FINALIZE` and `OBJECT_DELETE`) on the Pub/Sub
topic `dss-gs-events-<stage>`, read here from the pull subscription `dss-gs-events-<stage>-relay`
(`DSS_GCS_EVENTS_SUBSCRIPTION` names another). The `gs-event-relay` Lambda runs `relay()` every minute
until the subscription is empty or its time is up; each pull is a bounded batch.

A message is acknowledged only once its fate is settled:

- a notification for a key of the replica (`blobs/…`, `files/…`, `bundles/…`, `collections/…`, tombstones)
  in the replica's bucket becomes an `Event("gcp", key)` (`action` "created" for OBJECT_FINALIZE,
  "deleted" for OBJECT_DELETE; the handlers act on "created" only) and is acked after `bus.publish`
  returned. If publishing fails the message is handed back to Pub/Sub (ack deadline 0), which delivers it
  again, and the run stops: the bus is down, and the rest of the batch goes back the same way;
- anything else is acked without publishing: other buckets, keys the replica does not hold (the copy
  workflows' staged parts and composites under `workflows/parts/`, see `dss.storage.blobstore`), other
  event types, and the OBJECT_DELETE that GCS sends for a generation replaced by a newer one (the new
  generation's OBJECT_FINALIZE covers it);
- a malformed message (attributes missing, data that is not the object resource it claims to be) is
  logged and acked: redelivering it could never succeed, and a poison message must not loop.

Pub/Sub delivers at least once and the handlers are idempotent, so a duplicate costs a HEAD; the events
the server publishes for its own writes arrive twice for the same reason.

Client: google-cloud-pubsub's synchronous `SubscriberClient` (unary pull, ack, modify-ack-deadline): about
8 MB installed on top of what the runtime already holds (grpcio, protobuf, google-api-core). It reaches the
emulator named by `PUBSUB_EMULATOR_HOST` by itself; otherwise it signs in with the GCP credentials the
runtime holds (the secret store's `gcp-credentials.json`, else the key file named by
`GOOGLE_APPLICATION_CREDENTIALS`). Like the GCS store, it never falls back to the metadata server.
"""
from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dss.events import Event
from dss.events.bus import EventBus
from dss.identifiers import BlobKey, ObjectKey

if TYPE_CHECKING:
    from dss.runtime import Runtime

__all__ = ["Notification", "MalformedNotification", "Subscription", "PubSubSubscription", "Received", "RelayReport",
           "decode", "event_for", "relay", "relay_for_runtime", "topic_name", "subscription_name",
           "subscription_path", "REPLICA", "BATCH"]

logger = logging.getLogger(__name__)

REPLICA = "gcp"
BATCH = 100  # messages per pull
_PULL_TIMEOUT = 10.0  # seconds one pull may wait for messages (less when the deadline is nearer)
_NEXT_PULL_TIMEOUT = 2.0  # seconds a pull after a batch may wait: a backlog answers at once, an empty one waits
_MIN_TIME = 1.0  # seconds that must be left before another pull
_ACTIONS = {"OBJECT_FINALIZE": "created", "OBJECT_DELETE": "deleted"}
_PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"


def topic_name(stage: str) -> str:
    """The Pub/Sub topic the replica bucket's notification publishes to."""
    return f"dss-gs-events-{stage}"


def subscription_name(stage: str) -> str:
    """The pull subscription of the relay on `topic_name(stage)`."""
    return f"{topic_name(stage)}-relay"


def subscription_path(setting: str, stage: str, project: str | None) -> str:
    """`projects/<project>/subscriptions/<name>` for DSS_GCS_EVENTS_SUBSCRIPTION: a whole path as it is, a
    bare name (or empty: `subscription_name(stage)`) in `project`."""
    if setting.startswith("projects/"):
        return setting
    if not project:
        raise ValueError("the Pub/Sub project of the GCS events is unknown: set DSS_GCS_EVENTS_SUBSCRIPTION to "
                         "projects/<project>/subscriptions/<name>, or give the runtime GCP credentials")
    return f"projects/{project}/subscriptions/{setting or subscription_name(stage)}"


# --- messages ----------------------------------------------------------------------------------
class MalformedNotification(ValueError):
    """A Pub/Sub message that is not a GCS object notification."""


@dataclass(frozen=True)
class Notification:
    event_type: str
    bucket: str
    key: str
    generation: str | None = None
    overwritten: bool = False  # an OBJECT_DELETE of a generation replaced by a newer one


def decode(attributes: Mapping[str, str], data: bytes) -> Notification:
    """The notification a message carries (its attributes; the JSON_API_V1 payload must agree with them)."""
    missing = [name for name in ("eventType", "bucketId", "objectId") if not attributes.get(name)]
    if missing:
        raise MalformedNotification(f"attributes {', '.join(missing)} missing")
    bucket, key = attributes["bucketId"], attributes["objectId"]
    if attributes.get("payloadFormat") == "JSON_API_V1":
        try:
            resource = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedNotification(f"the payload is not JSON: {exc}") from None
        if not isinstance(resource, dict) or resource.get("name") != key or resource.get("bucket") != bucket:
            raise MalformedNotification("the payload does not describe the object the attributes name")
    return Notification(attributes["eventType"], bucket, key, attributes.get("objectGeneration"),
                        overwritten=bool(attributes.get("overwrittenByGeneration")))


def event_for(notification: Notification, bucket: str, replica: str = REPLICA) -> Event | None:
    """The bus event for a notification about `bucket` (the replica's), or None if it is not the bus's
    business."""
    action = _ACTIONS.get(notification.event_type)
    if action is None or notification.bucket != bucket or notification.overwritten:
        return None
    if BlobKey.parse(notification.key) is None and ObjectKey.parse(notification.key) is None:
        return None  # staged parts of copies, or anything else that is not a replica key
    return Event(replica, notification.key, action)


# --- the subscription ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    ack_id: str
    message_id: str
    attributes: Mapping[str, str]
    data: bytes


class Subscription(Protocol):
    """A Pub/Sub pull subscription: the three calls the relay makes."""

    def pull(self, max_messages: int, timeout: float) -> Sequence[Received]: ...

    def ack(self, ack_ids: Sequence[str]) -> None: ...

    def release(self, ack_ids: Sequence[str]) -> None:
        """Hand messages back for redelivery now (ack deadline 0)."""


class PubSubSubscription:
    """`Subscription` over google-cloud-pubsub's SubscriberClient (built once, injected or by `open`)."""

    def __init__(self, path: str, client: Any, *, return_immediately: bool = False) -> None:
        """`return_immediately` makes an empty pull answer at once instead of waiting a few seconds for
        messages (Pub/Sub discourages it: it may answer empty while messages are pending; tests use it)."""
        self.path, self.client, self.return_immediately = path, client, return_immediately

    @classmethod
    def open(cls, path: str, credentials_info: Mapping[str, Any] | None = None, *,
             return_immediately: bool = False) -> PubSubSubscription:
        return cls(path, make_client(credentials_info), return_immediately=return_immediately)

    def pull(self, max_messages: int, timeout: float) -> Sequence[Received]:
        from google.api_core import exceptions as api_errors

        try:
            # No client-side retry: an empty or slow pull just ends this run; the next one comes a minute later
            request = {"subscription": self.path, "max_messages": max_messages}
            if self.return_immediately:
                request["return_immediately"] = True
            response = self.client.pull(request=request, timeout=timeout, retry=None)
        except api_errors.DeadlineExceeded:
            return []
        return [Received(m.ack_id, m.message.message_id, dict(m.message.attributes), bytes(m.message.data))
                for m in response.received_messages]

    def ack(self, ack_ids: Sequence[str]) -> None:
        if ack_ids:
            self.client.acknowledge(request={"subscription": self.path, "ack_ids": list(ack_ids)})

    def release(self, ack_ids: Sequence[str]) -> None:
        if ack_ids:
            self.client.modify_ack_deadline(request={"subscription": self.path, "ack_ids": list(ack_ids),
                                                     "ack_deadline_seconds": 0})


def make_client(credentials_info: Mapping[str, Any] | None = None) -> Any:
    """A SubscriberClient: for the emulator of PUBSUB_EMULATOR_HOST (which the library reads), or signed in
    with `credentials_info` (a service-account key), else with the configured key file."""
    import google.auth.credentials
    from google.cloud import pubsub_v1

    anonymous = pubsub_v1.SubscriberClient(credentials=google.auth.credentials.AnonymousCredentials())
    if anonymous.api_endpoint != pubsub_v1.SubscriberClient.DEFAULT_ENDPOINT:
        return anonymous  # PUBSUB_EMULATOR_HOST: the library talks to the emulator without credentials
    return pubsub_v1.SubscriberClient(credentials=_credentials(credentials_info)[0])


def _credentials(info: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """Credentials and their project: the given service-account key, else the configured key file."""
    from google.oauth2 import service_account

    from dss.storage.blobstore.gs import configured_credentials

    if info:
        try:
            credentials = service_account.Credentials.from_service_account_info(dict(info), scopes=[_PUBSUB_SCOPE])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"the GCP credentials cannot be loaded ({type(exc).__name__})") from None
        return credentials, info.get("project_id")
    credentials, project = configured_credentials()
    if credentials is None:
        raise ValueError("no Google Cloud credentials are configured for the GCS event relay "
                         "(the secret gcp-credentials.json, GOOGLE_APPLICATION_CREDENTIALS, or PUBSUB_EMULATOR_HOST)")
    return credentials, project


# --- the relay -----------------------------------------------------------------------------------
@dataclass
class RelayReport:
    pulled: int = 0
    published: int = 0
    ignored: int = 0
    malformed: int = 0
    released: int = 0  # handed back to Pub/Sub because publishing failed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def relay(subscription: Subscription, bus: EventBus, deadline: float, *, bucket: str, replica: str = REPLICA,
          batch: int = BATCH) -> RelayReport:
    """Pull batches of notifications and publish their events on `bus` until the subscription is empty,
    publishing fails, or `deadline` (a `time.time()` value) is less than a second away. Only the first
    pull waits the full `_PULL_TIMEOUT` for messages; once a batch came, the rest of a backlog is there
    at once, so the pull that finds the subscription empty ends the run after `_NEXT_PULL_TIMEOUT`."""
    report = RelayReport()
    while (left := deadline - time.time()) > _MIN_TIME:
        wait = _NEXT_PULL_TIMEOUT if report.pulled else _PULL_TIMEOUT
        messages = subscription.pull(batch, timeout=min(wait, left))
        if not messages:
            break
        report.pulled += len(messages)
        if not _relay_batch(subscription, bus, messages, bucket, replica, report):
            break
    logger.info("GCS event relay: %s", report.as_dict())
    return report


def _relay_batch(subscription: Subscription, bus: EventBus, messages: Sequence[Received], bucket: str,
                 replica: str, report: RelayReport) -> bool:
    """Settle one batch; False if publishing failed (the unsettled messages are handed back)."""
    settled: list[str] = []
    try:
        for number, message in enumerate(messages):
            event = _event(message, bucket, replica, report)
            if event is not None:
                try:
                    bus.publish(event)
                except Exception as exc:  # noqa: BLE001 - whatever the bus raised, Pub/Sub keeps the message
                    logger.warning("GCS event relay: publishing %s failed; %d messages go back to Pub/Sub: %s",
                                   event.key, len(messages) - number, exc)
                    rest = [m.ack_id for m in messages[number:]]
                    subscription.release(rest)
                    report.released += len(rest)
                    return False
                report.published += 1
            settled.append(message.ack_id)
        return True
    finally:
        subscription.ack(settled)


def _event(message: Received, bucket: str, replica: str, report: RelayReport) -> Event | None:
    try:
        notification = decode(message.attributes, message.data)
    except MalformedNotification as exc:
        logger.warning("GCS event relay: dropping malformed message %s: %s", message.message_id, exc)
        report.malformed += 1
        return None
    event = event_for(notification, bucket, replica)
    if event is None:
        logger.debug("GCS event relay: ignoring %s of gs://%s/%s", notification.event_type, notification.bucket,
                     notification.key)
        report.ignored += 1
    return event


# --- the daemon's entry --------------------------------------------------------------------------
# one client per Runtime, i.e. per Lambda cold start
_subscriptions: weakref.WeakKeyDictionary[Runtime, PubSubSubscription] = weakref.WeakKeyDictionary()


def relay_for_runtime(runtime: Runtime, deadline: float) -> dict[str, int]:
    """`relay()` for the `gcp` replica of a runtime, on the subscription its configuration names."""
    from dss.storage.blobstore import split_url

    scheme, bucket, _ = split_url(runtime.config.replica_urls[REPLICA])
    if scheme != "gs":
        logger.info("GCS event relay: the %s replica is not a GCS bucket; nothing to relay", REPLICA)
        return RelayReport().as_dict()
    subscription = _subscriptions.get(runtime)
    if subscription is None:
        info = runtime.secrets.gcp_credentials  # the secret gcp-credentials.json, if the store has it
        client = make_client(info)
        project = _project(client, info)
        path = subscription_path(runtime.config.gcs_events_subscription, runtime.config.stage, project)
        subscription = _subscriptions.setdefault(runtime, PubSubSubscription(path, client))
    return relay(subscription, runtime.bus, deadline, bucket=bucket).as_dict()


def _project(client: Any, info: Mapping[str, Any] | None) -> str | None:
    if info:
        return info.get("project_id")
    from google.cloud import pubsub_v1

    if client.api_endpoint != pubsub_v1.SubscriberClient.DEFAULT_ENDPOINT:
        return None  # the emulator: the setting must name the whole path
    return _credentials(None)[1]

