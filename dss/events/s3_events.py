"""S3 object events of the `aws` replica's bucket, as the event bus receives them.

The replica bucket's notification publishes `s3:ObjectCreated:*` and `s3:ObjectRemoved:*` to its own SNS
topic, `topic_name(stage)` (`dss-s3-events-<stage>`), to which every handler queue of the bus is subscribed
without a filter (S3 cannot set the `handlers` message attribute the bus topic's subscriptions filter on).
So a write made behind the server's back (an operator's copy, a restore) is replicated, indexed and
journalled at once instead of at the next reconcile pass; the server's own writes arrive twice (its
publication and S3's event), which the idempotent handlers settle with a HEAD, as for the GCS relay.

A message body (raw delivery, or unwrapped from its SNS envelope by `dss.events.sqs`) is S3's JSON:
`{"Records": [...]}`, each record with `eventSource` `aws:s3`, `eventName` (`ObjectCreated:Put`, …),
`s3.bucket.name` and `s3.object.key` (URL-encoded, `+` for a space); or the `s3:TestEvent` S3 sends when
the notification is configured. `events()` turns one into the bus's `Event`s:

- a created or removed object of the replica bucket whose key is a replica key (`blobs/…`, `files/…`,
  `bundles/…`, `collections/…`, tombstones) becomes `Event("aws", key, "created" | "deleted")`;
- other buckets, keys the replica does not hold (the copy workflows' staged parts under `workflows/parts/`,
  journal objects) and other event types give nothing;
- a malformed record is logged and dropped: delivering it again could never succeed.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

from dss.events import Event
from dss.identifiers import BlobKey, ObjectKey

__all__ = ["REPLICA", "EVENT_TYPES", "TEST_EVENT", "MalformedRecord", "topic_name", "is_s3_message", "events",
           "event_for", "provision_notification"]

logger = logging.getLogger(__name__)

REPLICA = "aws"
EVENT_TYPES = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")  # what the bucket notification sends
TEST_EVENT = "s3:TestEvent"
_ACTIONS = {"ObjectCreated": "created", "ObjectRemoved": "deleted"}
_MAX_KEY = 1024  # bytes: S3's limit on a key


def topic_name(stage: str) -> str:
    """The SNS topic the replica bucket's notification publishes to."""
    return f"dss-s3-events-{stage}"


class MalformedRecord(ValueError):
    """A record that is not the S3 object event it claims to be."""


def is_s3_message(fields: Mapping[str, Any]) -> bool:
    """Whether a decoded message body is S3's (its records, or its test event) rather than the bus's own."""
    return "Records" in fields or fields.get("Event") == TEST_EVENT


def events(fields: Mapping[str, Any], bucket: str | None, replica: str = REPLICA) -> list[Event]:
    """The bus events of one S3 message about `bucket` (the replica's; None: none is known, so none)."""
    if fields.get("Event") == TEST_EVENT:
        logger.info("S3 test event for bucket %s", str(fields.get("Bucket"))[:100])
        return []
    records = fields.get("Records")
    if not isinstance(records, list):
        logger.warning("Dropping an S3 message whose Records is not a list")
        return []
    found = []
    for number, record in enumerate(records):
        try:
            event = event_for(record, bucket, replica)
        except MalformedRecord as exc:
            logger.warning("Dropping malformed S3 event record %d: %s", number, exc)
            continue
        if event is not None:
            found.append(event)
    return found


def event_for(record: Any, bucket: str | None, replica: str = REPLICA) -> Event | None:
    """The bus event of one record, or None if it is not the bus's business; MalformedRecord if it is not
    an S3 object event."""
    if not isinstance(record, Mapping) or record.get("eventSource") != "aws:s3":
        raise MalformedRecord("not an aws:s3 record")
    name, s3 = record.get("eventName"), record.get("s3")
    try:
        record_bucket, raw_key = s3["bucket"]["name"], s3["object"]["key"]  # type: ignore[index]
    except (TypeError, KeyError):
        raise MalformedRecord("s3.bucket.name or s3.object.key missing") from None
    if not isinstance(name, str) or not isinstance(record_bucket, str) or not isinstance(raw_key, str):
        raise MalformedRecord("eventName, the bucket or the key is not a string")
    key = unquote_plus(raw_key)
    if not key or len(key.encode()) > _MAX_KEY:
        raise MalformedRecord("the key is empty or longer than S3 allows")
    action = _ACTIONS.get(name.removeprefix("s3:").split(":", 1)[0])
    if action is None or bucket is None or record_bucket != bucket:
        logger.debug("Ignoring %s of s3://%s/%s", name, record_bucket, key)
        return None
    if BlobKey.parse(key) is None and ObjectKey.parse(key) is None:
        return None  # staged parts of copies, journal objects: not replica keys
    return Event(replica, key, action)


def provision_notification(s3: Any, sns: Any, bucket: str, topic_arn: str,
                           event_types: Sequence[str] = EVENT_TYPES) -> None:
    """Let the replica bucket publish to the S3 events topic, and send it the bucket's object events (what
    `infra/aws` does; for the emulators). Replaces the bucket's notification configuration."""
    import json

    sns.set_topic_attributes(TopicArn=topic_arn, AttributeName="Policy", AttributeValue=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "ReplicaBucketEvents", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
                       "Action": "sns:Publish", "Resource": topic_arn,
                       "Condition": {"ArnEquals": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}}]}))
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "TopicConfigurations": [{"Id": "dss-replica-events", "TopicArn": topic_arn, "Events": list(event_types)}]})
