"""S3 object events of the aws replica on the cloud event bus (`dss.events.s3_events`, `dss.events.sqs`).

Unit tests decode every shape S3 sends (raw delivery and the SNS envelope, several records, percent-encoded
keys, test events) and every shape that must give nothing (other buckets, staged parts, other event types,
garbage). The functional tests run on a moto server: the bucket notification → SNS → the handler queues →
`SQSEventBus.receive`, the code a daemon Lambda runs.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import boto3
import pytest

from dss.events import Event
from dss.events.bus import Deferred
from dss.events.s3_events import event_for, events, provision_notification, topic_name
from dss.events.sqs import BusSettings, SQSEventBus, decode_all, provision, resources
from tests.infra.helpers import poll_until

BUCKET = "dss-test-replica"
BLOB = "blobs/" + ".".join(("a" * 64, "b" * 40, "c" * 32, "d" * 8))
FILE = "files/0a1b2c3d-0000-4000-8000-0000000000f1.2026-12-01T013715.000000Z"
BUNDLE = "bundles/0a1b2c3d-0000-4000-8000-0000000000b1.2026-12-01T013715.000000Z"
TOMBSTONE = "bundles/0a1b2c3d-0000-4000-8000-0000000000b1.dead"


def record(key: str, name: str = "ObjectCreated:Put", bucket: str = BUCKET, encode: bool = True) -> dict[str, Any]:
    """One record as S3 writes it (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html)."""
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-12-01T01:37:15.000Z", "eventName": name,
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "dss-replica-events",
                   "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quote_plus(key) if encode else key, "size": 3, "eTag": "x"}}}


def raw(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


def enveloped(message: str) -> str:
    """The SNS envelope of a subscription without raw delivery."""
    return json.dumps({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                       "Subject": "Amazon S3 Notification", "Message": message, "Timestamp": "2026-12-01T01:37:15Z"})


TEST_EVENT = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-01T01:37:15Z",
                         "Bucket": BUCKET, "RequestId": "r", "HostId": "h"})


# --- decoding ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", [lambda body: body, enveloped], ids=["raw", "sns-envelope"])
@pytest.mark.parametrize("name,action", [("ObjectCreated:Put", "created"), ("ObjectCreated:Copy", "created"),
                                         ("ObjectCreated:CompleteMultipartUpload", "created"),
                                         ("ObjectRemoved:Delete", "deleted"),
                                         ("ObjectRemoved:DeleteMarkerCreated", "deleted")])
def test_object_events_of_the_replica_become_aws_events(wrap: Callable[[str], str], name: str, action: str) -> None:
    assert decode_all(wrap(raw(record(BLOB, name))), BUCKET) == [(Event("aws", BLOB, action), False)]


def test_every_record_of_a_message_is_an_event() -> None:
    body = raw(*(record(key) for key in (BLOB, FILE, BUNDLE, TOMBSTONE)))
    assert decode_all(body, BUCKET) == [(Event("aws", key), False) for key in (BLOB, FILE, BUNDLE, TOMBSTONE)]


@pytest.mark.parametrize("encode", [lambda key: quote(key, safe=""), lambda key: "".join(f"%{b:02X}" for b in
                                                                                         key.encode())],
                         ids=["quote", "every-byte"])
def test_keys_are_percent_decoded(encode: Callable[[str], str]) -> None:
    assert event_for(record(encode(FILE), encode=False), BUCKET) == Event("aws", FILE)


def test_a_plus_is_a_space() -> None:
    """`+` in S3's key is a space: `files/<uuid>+x` names `files/<uuid> x`, which is no replica key (undecoded,
    `files/<uuid>+x` would not be one either); a real `+` comes as `%2B`."""
    assert events({"Records": [record("workflows/parts/a b+c")]}, BUCKET) == []
    assert record("a b+c")["s3"]["object"]["key"] == "a+b%2Bc"  # how S3 (and quote_plus) writes them
    assert event_for(record(FILE.replace("/", "+"), encode=False), BUCKET) is None  # "files 0a1b…": not a key


@pytest.mark.parametrize("body", [
    raw(record(BLOB, bucket="someone-elses-bucket")),  # a foreign bucket
    raw(record("workflows/parts/upload-1/00001")),  # a copy workflow's staged part
    raw(record("journal/aws/00000001.json")),  # not a replica key
    raw(record(BLOB, "ObjectRestore:Completed")), raw(record(BLOB, "ObjectTagging:Put")),  # other event types
    TEST_EVENT, enveloped(TEST_EVENT),  # sent when the notification is configured
], ids=["foreign-bucket", "staged-part", "journal", "restore", "tagging", "test-event", "test-event-enveloped"])
def test_what_is_not_the_bus_business_gives_nothing(body: str) -> None:
    assert decode_all(body, BUCKET) == []


def test_without_a_known_bucket_s3_events_give_nothing() -> None:
    assert decode_all(raw(record(BLOB)), None) == []


GOOD = record(FILE)


@pytest.mark.parametrize("bad", [
    "not a record", {"eventSource": "aws:sqs", **{k: v for k, v in GOOD.items() if k != "eventSource"}},
    {k: v for k, v in GOOD.items() if k != "s3"}, {**GOOD, "s3": {"bucket": {"name": BUCKET}}},
    {**GOOD, "s3": {"bucket": {"name": BUCKET}, "object": {"key": 7}}}, {**GOOD, "eventName": None},
    {**GOOD, "s3": "x"}, record(""), record("x" * 1025),
], ids=["string", "other-source", "no-s3", "no-object", "key-not-string", "no-name", "s3-not-object", "empty-key",
        "long-key"])
def test_a_malformed_record_is_logged_and_dropped_and_the_others_kept(bad: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dss.events.s3_events"):
        assert decode_all(raw(GOOD, bad, record(BLOB)), BUCKET) == [(Event("aws", FILE), False),
                                                                    (Event("aws", BLOB), False)]
    assert "malformed S3 event record 1" in caplog.text


@pytest.mark.parametrize("body", ["", "not json", "[1, 2]", "null", '"text"', '{"Records": "x"}',
                                  '{"Records": null}', '{"replica": "aws"}', '{"replica": 1, "key": "k"}',
                                  '{"replica": "aws", "key": "k", "intent": "yes"}', '{"unknown": 1}',
                                  enveloped("not json"), json.dumps({"Type": "Notification", "Message": 5})],
                         ids=["empty", "text", "list", "null", "string", "records-string", "records-null",
                              "no-key", "replica-not-string", "intent-not-bool", "unknown", "envelope-of-text",
                              "envelope-message-not-string"])
def test_garbage_is_dropped_not_retried(body: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert decode_all(body, BUCKET) == []
    assert "Dropping" in caplog.text


def test_the_bus_own_messages_still_decode() -> None:
    own = json.dumps({"replica": "gcp", "key": FILE, "action": "created", "intent": True})
    assert decode_all(own, BUCKET) == [(Event("gcp", FILE), True)]
    assert decode_all(enveloped(Event("aws", BLOB).to_json()), None) == [(Event("aws", BLOB), False)]


def test_the_topic_name() -> None:
    assert topic_name("dev") == "dss-s3-events-dev"


# --- handling, on moto -----------------------------------------------------------------------------------
def _bus(handlers: tuple[str, ...], bucket: str | None = None) -> tuple[SQSEventBus, dict[str, str]]:
    """A bus with its own S3 events topic; with `bucket`, the bucket notifies that topic."""
    name = f"dss-events-t{uuid.uuid4().hex[:12]}"
    settings = BusSettings("sns", name, visibility=0, max_receives=3, intent_delay=0)
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    made = provision(resources(settings, handlers, sources=[f"{name}-s3"]), sns, sqs)
    if bucket is not None:
        provision_notification(boto3.client("s3"), sns, bucket, made[f"{name}-s3"])
    return SQSEventBus(settings, handlers, sns, sqs, topic_arn=made["topic"]), made


def test_each_record_goes_to_the_handler_and_a_failure_keeps_the_message(aws_env: str) -> None:
    bus, _ = _bus(("h",))
    seen: list[Event] = []

    def fails_on_the_file(event: Event) -> None:
        seen.append(event)
        if event.key == FILE:
            raise ValueError("the file")

    records = [{"messageId": "both", "receiptHandle": "unused", "body": raw(record(FILE), record(BLOB))},
               {"messageId": "blob", "receiptHandle": "unused", "body": raw(record(BLOB))},
               {"messageId": "garbage", "receiptHandle": "unused", "body": "garbage"}]
    reply = bus.handle("h", fails_on_the_file, {"Records": records}, s3_bucket=BUCKET)
    assert reply == {"batchItemFailures": [{"itemIdentifier": "both"}]}  # garbage is dropped, not retried
    assert seen == [Event("aws", FILE), Event("aws", BLOB), Event("aws", BLOB)]  # the blob after the failed file


def test_a_deferred_record_of_several_goes_on_as_a_message_of_its_own(aws_env: str) -> None:
    bus, _ = _bus(("h",))
    calls: list[Event] = []

    def defers_the_blob_once(event: Event) -> None:
        calls.append(event)
        if event.key == BLOB and calls.count(event) == 1:
            raise Deferred("copy under way", after=0)

    body = raw(record(FILE), record(BLOB))
    assert bus.handle("h", defers_the_blob_once, {"Records": [{"messageId": "m", "receiptHandle": "unused",
                                                               "body": body}]}, s3_bucket=BUCKET) == \
        {"batchItemFailures": []}
    poll_until(lambda: calls.count(Event("aws", BLOB)) == 2, "the deferred blob's own message",
               lambda: bus.receive("h", defers_the_blob_once, s3_bucket=BUCKET))
    assert calls.count(Event("aws", FILE)) == 1


def test_a_write_to_the_bucket_reaches_every_handler_queue(aws_env: str, new_s3_bucket: Callable[[], str]) -> None:
    """The bucket notification → the S3 events topic → every handler queue (raw, no filter) → the handler;
    a staged part's event reaches the queues too and is dropped there."""
    bucket = new_s3_bucket()
    bus, _ = _bus(("sync", "index"), bucket)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="workflows/parts/upload-1/00001", Body=b"part")
    s3.put_object(Bucket=bucket, Key=FILE, Body=b"{}")
    s3.delete_object(Bucket=bucket, Key=FILE)
    seen: dict[str, list[Event]] = {"sync": [], "index": []}

    def receive_all() -> None:
        for handler, got in seen.items():
            bus.receive(handler, got.append, s3_bucket=bucket)

    poll_until(lambda: all(len(got) == 2 for got in seen.values()), "the events in every queue", receive_all)
    poll_until(lambda: bus.pending() == 0, "empty queues (the staged part's message dropped)", receive_all)
    for got in seen.values():
        assert sorted(got, key=lambda e: e.action) == [Event("aws", FILE, "created"), Event("aws", FILE, "deleted")]
