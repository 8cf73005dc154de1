"""The cloud event bus (SNS → SQS per handler, dead-letter queues) against a moto server.

Each test provisions its own topic and queues from `resources()` under a unique name, with a visibility
timeout of 0 s so that a failed message is visible again at once. Messages are taken from the queues by
`SQSEventBus.receive`, which does what Lambda's SQS event source does (receive a batch, call `handle`,
delete what did not fail), so the code under test is the code a daemon Lambda calls.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import boto3
import pytest

from dss.checksums import checksum_stream
from dss.config import Config, ConfigError
from dss.events import Event
from dss.events.bus import Deferred, EventWorkers, RetryPolicy, SQLiteEventBus
from dss.events.handlers.sync import SyncHandler
from dss.events.sqs import BusSettings, SQSEventBus, decode, parse_queue_url, provision, resources
from dss.storage.blobstore import BlobStoreFactory
from dss.storage.replicas import Replicas
from tests.infra.dss_server import REPO
from tests.infra.helpers import poll_until
from tests.infra.storage_servers import STORE_OPTIONS

DEADLINE = 60.0  # seconds a test waits for the queues to settle: generous for a busy machine


def _bus(scheme: str = "sns", handlers: tuple[str, ...] = ("a", "b"), **options: int) -> SQSEventBus:
    settings = BusSettings(scheme, f"dss-events-t{uuid.uuid4().hex[:12]}",
                           **{"visibility": 0, "max_receives": 3, "intent_delay": 1, **options})
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    made = provision(resources(settings, handlers), sns, sqs)
    return SQSEventBus(settings, handlers, sns, sqs, topic_arn=made["topic"])


def _visible(bus: SQSEventBus, handler: str, dead: bool = False) -> int:
    attributes = bus.sqs.get_queue_attributes(QueueUrl=bus.queue_url(handler, dead=dead),
                                              AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_queue_url_names_the_resources():
    settings = parse_queue_url("sns://?max_receives=7&intent_delay=0", stage="dev")
    assert (settings.scheme, settings.name, settings.max_receives, settings.intent_delay) == ("sns", "dss-events-dev",
                                                                                              7, 0)
    description = resources(settings, ("sync",))
    assert description["topic"] == "dss-events-dev"
    assert description["queues"]["sync"]["dead_letter_queue"] == "dss-events-dev-sync-dlq"
    assert description["queues"]["sync"]["max_receive_count"] == 7
    json.dumps(description)  # plain JSON, for Terraform
    for bad in ("sqs://x?max_receives=0", "sqs://x?visibility=nope", "sns://x?intent_delay=901", "redis://x"):
        with pytest.raises(ValueError):
            parse_queue_url(bad, stage="dev")


def test_configuration_checks_the_queue_url(tmp_path):
    assert Config.from_env({"DSS_QUEUE_URL": "sns://"}, cwd=tmp_path).queue_url == "sns://"
    assert Config.from_env({}, cwd=tmp_path).queue_url.startswith("sqlite://")
    for bad in ("sns://x?max_receives=0", "redis://x"):
        with pytest.raises(ConfigError):
            Config.from_env({"DSS_QUEUE_URL": bad}, cwd=tmp_path)


@pytest.mark.parametrize("scheme", ["sns", "sqs"])
def test_publish_reaches_every_handler_queue(aws_env, scheme):
    bus = _bus(scheme)
    seen: dict[str, list[Event]] = {"a": [], "b": []}
    bus.publish(Event("aws", "bundles/one"))
    bus.publish(Event("gcp", "bundles/two"), handlers=("b",))
    for name in seen:
        poll_until(lambda n=name: len(seen[n]) >= (2 if n == "b" else 1), f"deliveries to {name}",
                   lambda n=name: bus.receive(n, seen[n].append))
    assert seen == {"a": [Event("aws", "bundles/one")], "b": [Event("aws", "bundles/one"), Event("gcp", "bundles/two")]}
    assert bus.receive("a", seen["a"].append) == 0 and bus.pending() == 0


def test_a_failing_handler_is_retried_dead_lettered_and_redriven(aws_env):
    bus = _bus(handlers=("flaky",), max_receives=3)
    calls: list[Event] = []
    broken = True

    def flaky(event: Event) -> None:
        calls.append(event)
        if broken:
            raise RuntimeError("replica down")

    bus.publish(Event("aws", "files/x"))
    poll_until(lambda: _visible(bus, "flaky", dead=True) == 1, "the dead letter", lambda: bus.receive("flaky", flaky))
    assert len(calls) == 3  # max_receives deliveries, then the dead-letter queue
    assert [(d["handler"], json.loads(d["body"])["key"]) for d in bus.dead_letters()] == [("flaky", "files/x")]
    assert bus.pending() == 0

    broken = False
    assert bus.redrive(limit=10) == 1
    poll_until(lambda: len(calls) == 4, "the re-driven delivery", lambda: bus.receive("flaky", flaky))
    assert calls[-1] == Event("aws", "files/x")
    poll_until(lambda: bus.pending() == 0, "an empty queue", lambda: bus.receive("flaky", flaky))
    assert _visible(bus, "flaky", dead=True) == 0


def test_redrive_stops_at_its_cap(aws_env):
    bus = _bus(handlers=("h",), max_receives=1)

    def broken(event: Event) -> None:
        raise RuntimeError("no")

    for n in range(3):
        bus.publish(Event("aws", f"files/{n}"))
    poll_until(lambda: _visible(bus, "h", dead=True) == 3, "three dead letters", lambda: bus.receive("h", broken))
    assert bus.redrive("h", limit=2) == 2
    assert _visible(bus, "h", dead=True) == 1


def test_partial_batch_failures_name_only_the_failed_records(aws_env):
    bus = _bus(handlers=("h",))
    records = [{"messageId": f"m{n}", "receiptHandle": "unused", "body": Event("aws", f"files/{n}").to_json()}
               for n in range(3)]

    def odd_fails(event: Event) -> None:
        if event.key.endswith("1"):
            raise ValueError("odd")

    assert bus.handle("h", odd_fails, {"Records": records}) == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    with pytest.raises(ValueError):
        bus.handle_record("h", odd_fails, records[1])


def test_deferred_hides_the_message_without_failing_it(aws_env):
    bus = _bus(handlers=("h",), max_receives=5, visibility=0)
    calls: list[float] = []
    # Hidden this long: the checks just after the first delivery must come before it shows again, however
    # busy the machine (the test then waits this long for the second delivery).
    after = 10

    def waits_once(event: Event) -> None:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Deferred("copy under way", after=after)

    bus.publish(Event("aws", "blobs/big"))
    poll_until(lambda: len(calls) == 1, "the first delivery", lambda: bus.receive("h", waits_once))
    # Visibility 0 would show a failed message again at once; a deferred one stays hidden for its wait.
    in_flight = bus.sqs.get_queue_attributes(QueueUrl=bus.queue_url("h"), AttributeNames=[
        "ApproximateNumberOfMessagesNotVisible"])["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
    assert _visible(bus, "h") == 0 and int(in_flight) == 1  # the same message, hidden (not a delayed copy)
    poll_until(lambda: len(calls) == 2, "the delivery after the wait", lambda: bus.receive("h", waits_once))
    assert calls[1] - calls[0] >= after - 0.5
    poll_until(lambda: bus.pending() == 0, "an empty queue")
    assert _visible(bus, "h", dead=True) == 0


def test_long_waits_never_dead_letter(aws_env):
    """SQS counts a deferred receive; a message whose next receive would be its last is replaced."""
    bus = _bus(handlers=("h",), max_receives=2, visibility=0)
    calls: list[Event] = []

    def waits_thrice(event: Event) -> None:
        calls.append(event)
        if len(calls) <= 3:
            raise Deferred("still copying", after=0)

    bus.publish(Event("aws", "blobs/big"))
    poll_until(lambda: len(calls) == 4, "four deliveries", lambda: bus.receive("h", waits_thrice))
    poll_until(lambda: bus.pending() == 0, "an empty queue")
    assert _visible(bus, "h", dead=True) == 0


def _s3_replicas(new_s3_bucket: Callable[[], str]) -> Replicas:
    return Replicas(BlobStoreFactory(**STORE_OPTIONS), {"aws": f"s3://{new_s3_bucket()}",
                                                        "gcp": f"s3://{new_s3_bucket()}"})


def _blob(store, data: bytes) -> str:
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    store.put(key, data)
    return key


def test_a_duplicate_delivery_changes_nothing(aws_env, new_s3_bucket):
    replicas = _s3_replicas(new_s3_bucket)
    bus = _bus(handlers=("sync",), intent_delay=0)
    sync = SyncHandler(replicas, bus)
    key = _blob(replicas["aws"], b"replicate me")
    bus.publish(Event("aws", key))
    poll_until(lambda: replicas["gcp"].exists(key), "the copy", lambda: bus.receive("sync", sync))
    copied, listing = replicas["gcp"].head(key), list(replicas["gcp"].list(""))

    bus.publish(Event("aws", key))  # the same event again, as SQS may deliver it
    poll_until(lambda: bus.pending() == 0, "the duplicate handled", lambda: bus.receive("sync", sync))
    assert replicas["gcp"].head(key) == copied and list(replicas["gcp"].list("")) == listing
    assert replicas["gcp"].get(key) == b"replicate me"
    assert _visible(bus, "sync", dead=True) == 0


@pytest.mark.parametrize("committed", [True, False])
def test_a_writer_killed_between_commit_and_publish(aws_env, new_s3_bucket, committed):
    """The crash window: the intent, sent delayed before the commit, is all that is left of the write."""
    replicas = _s3_replicas(new_s3_bucket)
    bus = _bus(handlers=("a", "b"), intent_delay=1)
    key = "bundles/" + str(uuid.uuid4()) + ".2026-01-01T000000.000000Z"
    bus.intent([Event("aws", key)])  # entered, never left: the writer dies right here…
    if committed:
        replicas["aws"].put_json(key, {"files": []}, if_absent=True)  # …or just after its commit
    seen: dict[str, list[Event]] = {"a": [], "b": []}

    def exists(event: Event) -> bool:
        return replicas[event.replica].exists(event.key)

    def drain(name: str) -> None:
        bus.receive(name, seen[name].append, exists)

    poll_until(lambda: bus.pending() == 0, "the intents decided", lambda: [drain(name) for name in seen])
    expected = [Event("aws", key)] if committed else []
    assert seen == {"a": expected, "b": expected}
    assert bus.dead_letters() == []


def test_a_writer_that_lives_publishes_at_once_and_its_intent_only_repeats_it(aws_env):
    bus = _bus(handlers=("h",), intent_delay=1)
    seen: list[Event] = []
    with bus.intent([Event("aws", "bundles/k")]):
        pass  # the commit
    poll_until(lambda: len(seen) == 2 and bus.pending() == 0, "the publication and the intent",
               lambda: bus.receive("h", seen.append, lambda event: True))
    assert seen == [Event("aws", "bundles/k")] * 2


def test_an_envelope_without_raw_delivery_is_unwrapped():
    body = json.dumps({"Type": "Notification", "Message": Event("gcp", "files/f").to_json()})
    assert decode(body) == (Event("gcp", "files/f"), False)


def test_dss_ops_redrives_the_dead_letter_queues_of_the_configured_bus(aws_env, tmp_path):
    bus = _bus(handlers=("sync", "index", "journal"), max_receives=1)

    def broken(event: Event) -> None:
        raise RuntimeError("index down")

    bus.publish(Event("aws", "bundles/b"), handlers=("index",))
    poll_until(lambda: _visible(bus, "index", dead=True) == 1, "the dead letter", lambda: bus.receive("index", broken))
    env = {**os.environ, "DSS_DATA_DIR": str(tmp_path / "data"), "DSS_QUEUE_URL": f"sns://{bus.settings.name}",
           "DSS_WORKERS": "0"}
    done = subprocess.run([sys.executable, "scripts/dss-ops.py", "events", "redrive", "--handler", "index"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Re-drove 1 " in done.stdout
    seen: list[Event] = []
    poll_until(lambda: seen == [Event("aws", "bundles/b")], "the re-driven event",
               lambda: bus.receive("index", seen.append))


def test_the_embedded_queue_redrives_its_dead_letters_too(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("a", "b"), policy=RetryPolicy(max_attempts=1))
    calls: list[str] = []

    def broken(event: Event) -> None:
        calls.append(event.key)
        raise RuntimeError("no")

    workers = EventWorkers(bus, {"a": broken, "b": broken})
    bus.publish(Event("aws", "files/x"))
    workers.drain(timeout=DEADLINE)
    assert len(bus.dead_letters()) == 2
    assert bus.redrive("a", limit=5) == 1 and [d["handler"] for d in bus.dead_letters()] == ["b"]
    workers.drain(timeout=DEADLINE)
    assert calls == ["files/x"] * 3
