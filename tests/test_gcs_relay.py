"""The GCS event relay, end to end on loopback: an object written to fake-gcs-server → its notification on the
Pub/Sub emulator → `relay()` → the SNS/SQS bus on the moto server → the `sync` handler → S3 (moto).

The session's fake-gcs-server publishes the events of every bucket to one topic; each test has its own
subscription (made after the test starts, so it sees only what the test causes), bucket and bus.
"""
from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import boto3
import pytest

from dss.checksums import checksum_stream
from dss.config import Config
from dss.events import Event
from dss.events.gcs_relay import (
    MalformedNotification,
    Notification,
    PubSubSubscription,
    Received,
    RelayReport,
    decode,
    event_for,
    relay,
    subscription_path,
)
from dss.events.handlers.sync import SyncHandler
from dss.events.sqs import BusSettings, SQSEventBus, provision, resources
from dss.storage.blobstore import STAGED_PARTS_PREFIX, BlobStoreFactory
from dss.storage.replicas import Replicas
from tests.infra.gcs_events import GCSEventServers, publish
from tests.infra.helpers import poll_until
from tests.infra.storage_servers import STORE_OPTIONS

BLOB = "blobs/" + "a" * 64 + "." + "b" * 40 + "." + "c" * 32 + "." + "d" * 8


def _attributes(bucket: str, key: str, event_type: str = "OBJECT_FINALIZE", **more: str) -> dict[str, str]:
    return {"eventType": event_type, "payloadFormat": "JSON_API_V1", "bucketId": bucket, "objectId": key,
            "objectGeneration": "1", **more}


def _resource(bucket: str, key: str) -> bytes:
    return json.dumps({"kind": "storage#object", "bucket": bucket, "name": key, "size": "3"}).encode()


# --- messages, without servers ----------------------------------------------------------------------
def test_a_notification_becomes_an_event_of_the_gcp_replica():
    notification = decode(_attributes("replica", BLOB), _resource("replica", BLOB))
    assert notification == Notification("OBJECT_FINALIZE", "replica", BLOB, "1")
    assert event_for(notification, "replica") == Event("gcp", BLOB, "created")
    deleted = decode(_attributes("replica", BLOB, "OBJECT_DELETE"), _resource("replica", BLOB))
    assert event_for(deleted, "replica") == Event("gcp", BLOB, "deleted")
    key = f"bundles/{uuid.uuid4()}.2024-01-01T000000.000000Z.dead"
    assert event_for(decode(_attributes("replica", key), _resource("replica", key)), "replica") == \
        Event("gcp", key, "created")
    # the payload is optional when the notification is configured without one
    assert decode({**_attributes("replica", BLOB), "payloadFormat": "NONE"}, b"").key == BLOB


@pytest.mark.parametrize("attributes", [
    _attributes("other-bucket", BLOB),  # not the replica's bucket
    _attributes("replica", f"{STAGED_PARTS_PREFIX}copy-1/00001"),  # a copy's staged part
    _attributes("replica", f"{STAGED_PARTS_PREFIX}copy-1/composed-0-00000"),  # its composite
    _attributes("replica", "files/not-a-uuid.2024"),
    _attributes("replica", BLOB, "OBJECT_METADATA_UPDATE"),
    _attributes("replica", BLOB, "OBJECT_ARCHIVE"),
    _attributes("replica", BLOB, "OBJECT_DELETE", overwrittenByGeneration="2"),  # a newer generation replaced it
], ids=["other-bucket", "staged-part", "composite", "not-a-key", "metadata", "archive", "overwritten"])
def test_what_is_not_the_bus_business_is_ignored(attributes: dict[str, str]):
    notification = decode(attributes, _resource(attributes["bucketId"], attributes["objectId"]))
    assert event_for(notification, "replica") is None


@pytest.mark.parametrize("attributes,data", [
    ({}, b""),
    ({"eventType": "OBJECT_FINALIZE", "bucketId": "replica"}, b""),  # no objectId
    (_attributes("replica", BLOB), b"not json"),
    (_attributes("replica", BLOB), b"\xff\xfe"),
    (_attributes("replica", BLOB), b"[1, 2]"),
    (_attributes("replica", BLOB), _resource("replica", "blobs/another")),  # the payload names another object
    (_attributes("replica", BLOB), _resource("other", BLOB)),
], ids=["nothing", "no-object", "not-json", "not-utf8", "not-an-object", "other-object", "other-bucket"])
def test_malformed_messages_are_refused(attributes: dict[str, str], data: bytes):
    with pytest.raises(MalformedNotification):
        decode(attributes, data)


def test_the_subscription_is_named_by_the_stage_or_the_setting(tmp_path):
    assert subscription_path("", "dev", "proj") == "projects/proj/subscriptions/dss-gs-events-dev-relay"
    assert subscription_path("mine", "dev", "proj") == "projects/proj/subscriptions/mine"
    assert subscription_path("projects/p/subscriptions/s", "dev", None) == "projects/p/subscriptions/s"
    with pytest.raises(ValueError, match="DSS_GCS_EVENTS_SUBSCRIPTION"):
        subscription_path("", "dev", None)
    config = Config.from_env({"DSS_GCS_EVENTS_SUBSCRIPTION": " projects/p/subscriptions/s "}, cwd=tmp_path)
    assert config.gcs_events_subscription == "projects/p/subscriptions/s"
    assert Config.from_env({}, cwd=tmp_path).gcs_events_subscription == ""


def _service_account_key() -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "relay-project", "private_key_id": "k1", "private_key": pem,
            "client_email": "relay@relay-project.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token"}


def test_the_client_signs_in_with_the_runtime_key_or_refuses_without_one(monkeypatch, tmp_path):
    """Off the emulator: the key from the secret store (its project names the subscription); with none
    configured, a clear refusal, and no probe of a metadata server."""
    from google.oauth2 import service_account

    from dss.events.gcs_relay import _project, make_client

    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no developer's gcloud login
    info = _service_account_key()
    client = make_client(info)
    assert isinstance(client._transport._credentials, service_account.Credentials)
    assert client._transport._credentials.service_account_email == info["client_email"]
    assert _project(client, info) == "relay-project"
    with pytest.raises(ValueError, match="no Google Cloud credentials"):
        make_client(None)
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_client({"type": "service_account", "private_key": "not a key"})


# --- end to end on loopback --------------------------------------------------------------------------
def _bus(topic_arn: str | None = None) -> SQSEventBus:
    settings = BusSettings("sns", f"dss-events-t{uuid.uuid4().hex[:12]}", visibility=0, max_receives=3,
                           intent_delay=0)
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    made = provision(resources(settings, ("sync",)), sns, sqs)
    return SQSEventBus(settings, ("sync",), sns, sqs, topic_arn=topic_arn or made["topic"])


class Recorded:
    """The real subscription, noting what went through it: which messages were acked, which handed back."""

    def __init__(self, subscription: PubSubSubscription) -> None:
        self.subscription = subscription
        self.pulled: dict[str, str] = {}  # ack id → message id
        self.acked: set[str] = set()
        self.released: set[str] = set()

    def pull(self, max_messages: int, timeout: float) -> Sequence[Received]:
        messages = self.subscription.pull(max_messages, timeout)
        self.pulled.update((m.ack_id, m.message_id) for m in messages)
        return messages

    def ack(self, ack_ids: Sequence[str]) -> None:
        self.subscription.ack(ack_ids)
        self.acked.update(ack_ids)

    def release(self, ack_ids: Sequence[str]) -> None:
        self.subscription.release(ack_ids)
        self.released.update(ack_ids)

    def unsettled(self) -> set[str]:
        return set(self.pulled) - self.acked - self.released


class Loopback:
    """The gcp replica on fake-gcs-server, the aws replica on moto, a bus with a sync queue, a subscription."""

    def __init__(self, servers: GCSEventServers, subscription: str, s3_bucket: str, bus: SQSEventBus) -> None:
        from google.cloud import storage

        self.servers = servers
        self.gcs_bucket = f"dss-relay-{uuid.uuid4().hex[:12]}"
        storage.Client(project=servers.project).create_bucket(self.gcs_bucket)
        self.replicas = Replicas(BlobStoreFactory(**STORE_OPTIONS), {"aws": f"s3://{s3_bucket}",
                                                                     "gcp": f"gs://{self.gcs_bucket}"})
        self.subscription = Recorded(PubSubSubscription.open(subscription, return_immediately=True))
        self.bus = bus
        self.sync = SyncHandler(self.replicas, bus)
        self.report = RelayReport()

    def relay(self, bus: SQSEventBus | None = None) -> RelayReport:
        """One run of the relay (what the scheduled Lambda does), its counts added to `self.report`."""
        report = relay(self.subscription, bus or self.bus, time.time() + 30, bucket=self.gcs_bucket)
        for name, value in report.as_dict().items():
            setattr(self.report, name, getattr(self.report, name) + value)
        return report

    def step(self) -> None:
        """The relay, then the sync Lambda's queue."""
        self.relay()
        self.bus.receive("sync", self.sync)

    def settle(self, what: str, condition: Callable[[], bool]) -> None:
        poll_until(condition, what, self.step)

    def blob(self, data: bytes) -> str:
        key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
        self.replicas["gcp"].put(key, data, content_type="application/octet-stream", metadata={"origin": "gcs"})
        return key


@pytest.fixture
def loopback(gcs_events_env: GCSEventServers, gcs_events_subscription: str, aws_env: str,
             new_s3_bucket: Callable[[], str]) -> Loopback:
    return Loopback(gcs_events_env, gcs_events_subscription, new_s3_bucket(), _bus())


def _file_metadata(data: bytes) -> dict[str, Any]:
    sums = checksum_stream(io.BytesIO(data), len(data))
    return {"format": "0.0.4", "creator_uid": 0, "version": "2024-01-01T000000.000000Z",
            "content-type": "application/octet-stream", "size": len(data), "sha256": sums.sha256,
            "sha1": sums.sha1, "s3-etag": sums.s3_etag, "crc32c": sums.crc32c}


def test_a_write_to_the_gcp_replica_is_replicated_to_s3(loopback: Loopback):
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit
    blob = loopback.blob(data)
    file_key = f"files/{uuid.uuid4()}.2024-01-01T000000.000000Z"
    loopback.replicas["gcp"].put_json(file_key, _file_metadata(data))
    # what the relay must not publish: a copy's staged part, and an object of another bucket
    loopback.replicas["gcp"].put(f"{STAGED_PARTS_PREFIX}some-copy/00001", b"part")
    other = BlobStoreFactory(**STORE_OPTIONS).for_url(f"gs://{loopback.gcs_bucket}-other")
    from google.cloud import storage

    storage.Client(project=loopback.servers.project).create_bucket(other.bucket)
    other.put(blob, data)

    aws = loopback.replicas["aws"]
    loopback.settle("the file and its blob in S3", lambda: aws.exists(file_key) and aws.exists(blob))
    assert aws.get(blob) == data  # byte-identical
    assert aws.get_json(file_key) == loopback.replicas["gcp"].get_json(file_key)
    assert aws.head(blob).metadata.get("origin") == "gcs"
    loopback.settle("the other events", lambda: loopback.report.ignored >= 2)
    assert loopback.report.malformed == 0 and loopback.report.released == 0
    assert not aws.exists(f"{STAGED_PARTS_PREFIX}some-copy/00001")


def test_a_delete_is_relayed_and_replicates_nothing(loopback: Loopback):
    data = b"written, then deleted"
    blob = loopback.blob(data)
    loopback.settle("the copy", lambda: loopback.replicas["aws"].exists(blob))
    loopback.replicas["gcp"].delete(blob)
    seen: list[Event] = []
    poll_until(lambda: Event("gcp", blob, "deleted") in seen, "the delete event",
               lambda: (loopback.relay(), loopback.bus.receive("sync", seen.append)))
    loopback.bus.publish(Event("gcp", blob, "deleted"))
    poll_until(lambda: loopback.bus.pending() == 0, "the delete handled", loopback.step)
    assert loopback.replicas["aws"].get(blob) == data  # DSS never removes data from a replica on its own


def test_duplicates_and_malformed_messages_are_settled(loopback: Loopback):
    data = b"delivered twice"
    blob = loopback.blob(data)
    servers, bucket = loopback.servers, loopback.gcs_bucket
    publish(servers.pubsub_host, servers.topic_path, _resource(bucket, blob), _attributes(bucket, blob))
    for attributes, payload in [({"eventType": "OBJECT_FINALIZE"}, b"no bucket, no object"),
                                (_attributes(bucket, blob), b"\x00 not json"),
                                (_attributes(bucket, blob), _resource(bucket, "blobs/someone-else"))]:
        publish(servers.pubsub_host, servers.topic_path, payload, attributes)
    loopback.settle("the copy and every message", lambda: loopback.replicas["aws"].exists(blob)
                    and loopback.report.malformed == 3 and loopback.report.published >= 2)
    listing = list(loopback.replicas["aws"].list(""))
    poll_until(lambda: loopback.bus.pending() == 0, "the queue drained", loopback.step)
    assert list(loopback.replicas["aws"].list("")) == listing == [blob]
    assert loopback.replicas["aws"].get(blob) == data
    assert loopback.bus.dead_letters() == []
    # every message was acked, the malformed ones too: none is redelivered, ever
    assert loopback.subscription.unsettled() == set() and loopback.subscription.released == set()
    assert loopback.relay().pulled == 0


def test_a_message_is_not_acked_when_publishing_fails(loopback: Loopback):
    blob = loopback.blob(b"the bus was down")
    broken = _bus(topic_arn=f"arn:aws:sns:us-east-1:123456789012:dss-missing-{uuid.uuid4().hex[:8]}")
    failed: list[RelayReport] = []
    poll_until(lambda: bool(failed), "a failed publication",
               lambda: failed.extend(r for r in [loopback.relay(broken)] if r.released))
    assert failed[0].published == 0 and loopback.report.released >= 1
    assert not loopback.replicas["aws"].exists(blob)
    handed_back = set(loopback.subscription.released)
    assert handed_back and not handed_back & loopback.subscription.acked
    # handed back to Pub/Sub: the next run, with the bus up again, publishes it
    loopback.settle("the copy after the bus came back", lambda: loopback.replicas["aws"].exists(blob))
    assert loopback.replicas["aws"].get(blob) == b"the bus was down"
    assert loopback.subscription.unsettled() == set()


def test_the_daemon_entry_relays_for_the_runtime_gcp_replica(loopback: Loopback, gcs_events_subscription: str,
                                                            tmp_path):
    """`relay_for_runtime`, what the gs-event-relay Lambda calls: the bucket, the bus and the subscription all
    come from the runtime's configuration."""
    from dss.events.gcs_relay import relay_for_runtime
    from dss.runtime import Runtime

    env = {"DSS_DATA_DIR": str(tmp_path / "data"), "DSS_WORKERS": "0", "DSS_DEPLOYMENT_STAGE": "test",
           "DSS_QUEUE_URL": f"sqs://dss-events-t{uuid.uuid4().hex[:12]}?visibility=0&intent_delay=0",
           "DSS_AWS_REPLICA_URL": loopback.replicas["aws"].url, "DSS_GCP_REPLICA_URL": loopback.replicas["gcp"].url,
           "DSS_GCS_EVENTS_SUBSCRIPTION": gcs_events_subscription}
    runtime = Runtime(Config.from_env(env))
    assert isinstance(runtime.bus, SQSEventBus)
    provision(runtime.bus.resources(), boto3.client("sns"), boto3.client("sqs"))  # sync, index, journal
    try:
        blob = loopback.blob(b"through the daemon entry")
        reports: list[dict[str, int]] = []
        poll_until(lambda: any(r["published"] for r in reports), "the relayed event",
                   lambda: reports.append(relay_for_runtime(runtime, time.time() + 3)))
        assert runtime.bus.receive("sync", runtime.handlers["sync"]) == 1
        assert loopback.replicas["aws"].get(blob) == b"through the daemon entry"
    finally:
        runtime.close()
