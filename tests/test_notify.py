"""Webhook delivery against real HTTP receivers on loopback.

Signatures are checked on the receiver side with independent libraries: `requests-http-signature` 0.1.0
for draft-cavage and `http-message-signatures` for RFC 9421, never with `dss.notify.signing` itself.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.parser
import email.policy
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, MappingKeyResolver, algorithms
from requests.structures import CaseInsensitiveDict
from requests_http_signature import HTTPSignatureAuth

from dss.notify import (
    AllowList,
    AttemptResult,
    Delivery,
    DeliveryQueue,
    DeliveryStore,
    DeliveryWorker,
    HttpTransport,
    UnsafeCallbackURL,
    check_callback_url,
    deliver_due,
    open_delivery_store,
)
from dss.notify.dynamodb import DynamoDBDeliveryStore
from dss.notify.signing import sign_cavage
from tests.infra.helpers import poll_until
from tests.infra.receivers import Receiver, RecordedRequest, self_signed_tls, verify_cavage

SECRET = "s3cr3t-hmac-key-do-not-leak"
FAST = (0, 0.2, 0.4)
LOOPBACK = "127.0.0.1/32"
# Request timeout for deliveries that should succeed: a receiver in this busy test process may take seconds
# to answer, and an attempt that timed out would fail the test. Tests of timeouts set their own.
TIMEOUT = 30.0


# -- helpers -----------------------------------------------------------------------------------------

def make_delivery(url: str, **changes: Any) -> Delivery:
    subscription_id = changes.pop("subscription_id", str(uuid.uuid4()))
    transaction_id = str(uuid.uuid4())
    payload = {"transaction_id": transaction_id, "subscription_id": subscription_id, "event_type": "CREATE",
               "match": {"bundle_uuid": str(uuid.uuid4()), "bundle_version": "2024-01-01T000000.000000Z"}}
    fields: dict[str, Any] = {"subscription_id": subscription_id, "owner": "owner@example.org",
                              "callback_url": url, "payload": payload, "hmac_secret_key": SECRET}
    fields.update(changes)
    return Delivery(**fields)


class StoreMaker:
    """Opens stores of one backend over one shared queue (a file, or a DynamoDB table on moto), and reaches
    into that storage the way only a test may (to corrupt an item, or to see where secrets are kept)."""

    def __init__(self, backend: str, tmp_path: Path, client: Any = None) -> None:
        self.backend = backend
        self.path = tmp_path / "notify.sqlite3"
        self.client = client
        self.table = f"deliveries-{uuid.uuid4().hex[:12]}"
        self.stores: list[DeliveryQueue] = []

    def __call__(self, **options: Any) -> Any:
        options.setdefault("delays", FAST)
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("allowlist", LOOPBACK)
        store: DeliveryQueue
        if self.backend == "sqlite":
            store = DeliveryStore(self.path, **options)
        else:
            store = DynamoDBDeliveryStore(self.table, client=self.client, create_if_missing=not self.stores,
                                          **options)
        self.stores.append(store)
        return store

    def corrupt_spec(self, delivery_id: str) -> None:
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.path)) as db, db:
                db.execute("UPDATE deliveries SET spec = '{}' WHERE id = ?", (delivery_id,))
        else:
            self.client.update_item(TableName=self.table, Key={"hash_key": {"S": delivery_id},
                                                               "sort_key": {"S": "delivery"}},
                                    UpdateExpression="SET spec = :s", ExpressionAttributeValues={":s": {"S": "{}"}})

    def stored_secrets(self) -> dict[str, bytes | None]:
        """Every delivery id with the secret stored for it, as the storage itself holds it."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                return dict(db.execute("SELECT id, hmac_secret FROM deliveries"))
        items = self.client.scan(TableName=self.table)["Items"]
        return {i["hash_key"]["S"]: i["hmac_secret"]["B"] if "hmac_secret" in i else None for i in items}

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture(params=["sqlite", "dynamodb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """Stores of each backend: SQLite, and DynamoDB on the moto server (its table made per test)."""
    client = None
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")
        import boto3

        client = boto3.client("dynamodb")
    maker = StoreMaker(request.param, tmp_path, client)
    yield maker
    maker.close()


@pytest.fixture
def make_sqlite_store(tmp_path: Path) -> Iterator[StoreMaker]:
    """SQLite stores only, for tests of what happens above the store (signing, transport, URL checks),
    and of the worker threads' sharing, which the deliver_due tests cover for DynamoDB."""
    maker = StoreMaker("sqlite", tmp_path)
    yield maker
    maker.close()


def state_of(store: DeliveryQueue, delivery_id: str) -> str:
    record = store.get(delivery_id)
    assert record is not None
    return record.state


def verify_rfc9421(request: RecordedRequest, secret: str = SECRET, key_id: str = "") -> Any:
    """Receiver-side check with http-message-signatures' own verifier (raises InvalidSignature)."""
    message = SimpleNamespace(method=request.method, url=request.url, headers=CaseInsensitiveDict(request.headers))
    resolver = MappingKeyResolver(public_keys={key_id: secret.encode()}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)
    return verifier.verify(message, body=request.body, expect_tag="hca-dss-notify",
                           require_components=("@method", "@authority", "@path", "content-type", "content-digest"))


def multipart_parts(request: RecordedRequest) -> dict[str, str]:
    head = f"Content-Type: {request.headers['Content-Type']}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.body)
    return {part.get_param("name", header="content-disposition"): part.get_content()
            for part in message.iter_parts()}


def deliver_once(make_store: Callable[..., DeliveryQueue], receiver: Receiver, **changes: Any) -> tuple[
        Delivery, RecordedRequest]:
    store = make_store()
    delivery = make_delivery(receiver.url(), **changes)
    delivery_id = store.enqueue(delivery)
    assert store.run_due() == 1
    assert state_of(store, delivery_id) == "delivered"
    [request] = receiver.requests
    return delivery, request


# -- payloads, methods and signatures ----------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_json_payload_with_cavage_signature(make_store: Any, receiver: Receiver, method: str) -> None:
    delivery, request = deliver_once(make_store, receiver, method=method)
    assert request.method == method
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-dss-notify-attempt"] == "1"
    assert json.loads(request.body) == delivery.payload
    assert 'algorithm="hmac-sha256",headers="date digest"' in request.headers["Authorization"]
    verify_cavage(request, SECRET, key_id=f"hca-dss:{delivery.subscription_id}")


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_multipart_payload_with_cavage_signature(make_sqlite_store: Any, receiver: Receiver, method: str) -> None:
    delivery, request = deliver_once(make_sqlite_store, receiver, method=method, encoding="multipart/form-data",
                                     form_fields={"team": "blue", "run": "7"}, payload_form_field="notification",
                                     hmac_key_id="my-key")
    assert request.method == method
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(request)
    assert parts["team"] == "blue" and parts["run"] == "7"
    assert json.loads(parts["notification"]) == delivery.payload
    verify_cavage(request, SECRET, key_id="my-key")


@pytest.mark.parametrize(("method", "encoding"), [("POST", "application/json"), ("PUT", "multipart/form-data")])
def test_rfc9421_signature_verifies_with_the_library(make_sqlite_store: Any, receiver: Receiver, method: str,
                                                      encoding: str) -> None:
    before = time.time()
    delivery, request = deliver_once(make_sqlite_store, receiver, method=method, encoding=encoding,
                                     signature_format="rfc9421")
    after = time.time()
    assert "Authorization" not in request.headers
    assert request.headers["Content-Digest"].startswith("sha-256=:")
    [result] = verify_rfc9421(request, key_id=delivery.key_id)
    assert result.parameters["keyid"] == f"hca-dss:{delivery.subscription_id}"
    assert int(before) <= int(result.parameters["created"]) <= after  # signed during the delivery
    assert result.body == request.body


def test_tampered_body_fails_cavage_verification(make_sqlite_store: Any, receiver: Receiver) -> None:
    _, request = deliver_once(make_sqlite_store, receiver)
    verify_cavage(request, SECRET)
    tampered = dataclasses.replace(request, body=request.body.replace(b"CREATE", b"DELETE"))
    with pytest.raises(AssertionError, match="Digest"):
        verify_cavage(tampered, SECRET)
    # An attacker who also fixes up Digest breaks the signature instead.
    new_digest = "SHA-256=" + base64.b64encode(hashlib.sha256(tampered.body).digest()).decode()
    lines = tuple((k, new_digest if k.lower() == "digest" else v) for k, v in request.header_lines)
    refitted = dataclasses.replace(tampered, header_lines=lines)
    with pytest.raises(AssertionError):
        HTTPSignatureAuth.verify(SimpleNamespace(headers=refitted.headers), key_resolver=lambda **_: SECRET.encode())
    with pytest.raises(AssertionError):
        verify_cavage(request, secret="wrong secret")


def test_tampered_body_fails_rfc9421_verification(make_sqlite_store: Any, receiver: Receiver) -> None:
    delivery, request = deliver_once(make_sqlite_store, receiver, signature_format="rfc9421")
    tampered = dataclasses.replace(request, body=request.body + b" ")
    with pytest.raises(InvalidSignature):
        verify_rfc9421(tampered, key_id=delivery.key_id)
    with pytest.raises(InvalidSignature):
        verify_rfc9421(request, secret="wrong secret", key_id=delivery.key_id)
    moved = dataclasses.replace(request, method="PUT", path="/elsewhere")
    with pytest.raises(InvalidSignature):
        verify_rfc9421(moved, key_id=delivery.key_id)


def test_unsigned_delivery_has_no_signature(make_sqlite_store: Any, receiver: Receiver) -> None:
    _, request = deliver_once(make_sqlite_store, receiver, hmac_secret_key=None)
    for header in ("Authorization", "Digest", "Signature", "Signature-Input"):
        assert header not in request.headers


def test_cavage_signer_matches_requests_http_signature() -> None:
    body = b'{"hello": "world"}'
    theirs = requests.Request("POST", "http://example.org/hook", data=body,
                              headers={"Date": "Tue, 07 Jun 2022 20:51:35 GMT"}).prepare()
    HTTPSignatureAuth(key=SECRET.encode(), key_id="hca-dss:abc")(theirs)
    ours = sign_cavage("POST", "http://example.org/hook", {"Date": "Tue, 07 Jun 2022 20:51:35 GMT"}, body,
                       secret=SECRET.encode(), key_id="hca-dss:abc")
    assert ours == {"Digest": theirs.headers["Digest"], "Authorization": theirs.headers["Authorization"]}


@pytest.mark.parametrize("key_id", ['a,b', 'say "hi"', "new\nline", "caf\u00e9", "back\\slash"])
def test_unsafe_key_ids_are_refused_up_front(key_id: str) -> None:
    with pytest.raises(ValueError):
        make_delivery("http://127.0.0.1/", hmac_key_id=key_id)


# -- retries, dead letters, restarts and leases --------------------------------------------------------

def test_retries_follow_the_schedule(make_store: Any, receiver: Receiver) -> None:
    store = make_store()
    receiver.fail(2)
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    with DeliveryWorker(store, threads=1):
        poll_until(lambda: state_of(store, delivery_id) == "delivered", "the delivery after the retries")
    record = store.get(delivery_id)
    assert record is not None
    assert [(a.status_code, a.outcome) for a in record.attempts] == [(500, "failed"), (500, "failed"),
                                                                      (200, "delivered")]
    first, second, third = record.attempts
    assert second.started_at - (first.started_at + (first.duration or 0)) >= 0.2 - 0.01
    assert third.started_at - (second.started_at + (second.duration or 0)) >= 0.4 - 0.01
    assert [r.headers["X-dss-notify-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    for request in receiver.requests:
        verify_cavage(request, SECRET)


def test_schedule_with_an_injected_clock(make_store: Any, receiver: Receiver) -> None:
    delays = (5, 60, 600)
    store = make_store(delays=delays, clock=lambda: 1000.0)
    receiver.fail(1, mode="drop")
    delivery_id = store.enqueue(make_delivery(receiver.url()))  # at t=1000: due at 1005
    assert store.run_due(now=1004.9) == 0
    assert store.next_due_at() == 1005.0
    assert store.run_due(now=1005.0) == 1  # connection dropped; next at 1005 + 60
    record = store.get(delivery_id)
    assert record is not None and record.next_attempt_at == 1065.0
    assert record.attempts[0].status_code is None and "ConnectionError" in (record.attempts[0].error or "")
    assert store.run_due(now=1064.0) == 0
    assert store.run_due(now=1065.0) == 1
    assert state_of(store, delivery_id) == "delivered"


def test_receiver_down_then_up_gets_the_delivery(make_store: Any, receiver: Receiver) -> None:
    # Retries every 0.2 s for a minute: the delivery must not run out of attempts before this (perhaps
    # slow) test brings the receiver back.
    store = make_store(delays=(0,) + (0.2,) * 300)
    receiver.down()
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    with DeliveryWorker(store, threads=2):
        poll_until(lambda: (r := store.get(delivery_id)) is not None and len(r.attempts) >= 1
                   and r.attempts[0].outcome == "failed", "a failed first attempt")
        receiver.up()
        poll_until(lambda: state_of(store, delivery_id) == "delivered", "the delivery once the receiver is up")
    record = store.get(delivery_id)
    assert record is not None and "refused" in (record.attempts[0].error or "").lower()
    assert len(receiver.requests) == 1


def test_dead_letter_after_the_last_try(make_store: Any, receiver: Receiver) -> None:
    store = make_store(delays=(0, 0, 0))
    receiver.fail(100)
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    assert store.run_due() == 3
    assert store.run_due() == 0
    record = store.get(delivery_id)
    assert record is not None
    assert record.state == "dead" and record.next_attempt_at is None and record.last_error == "HTTP 500"
    assert [a.status_code for a in record.attempts] == [500, 500, 500]
    assert len(receiver.requests) == 3
    assert store.next_due_at() is None


def test_restart_resumes_pending_work(make_store: Any, receiver: Receiver) -> None:
    first = make_store()
    receiver.down()
    delivery_id = first.enqueue(make_delivery(receiver.url()))
    assert first.run_due() == 1
    first.close()
    receiver.up()
    second = make_store()
    with DeliveryWorker(second, threads=1):
        poll_until(lambda: state_of(second, delivery_id) == "delivered", "the resumed delivery")
    record = second.get(delivery_id)
    assert record is not None and [a.outcome for a in record.attempts] == ["failed", "delivered"]
    verify_cavage(receiver.requests[0], SECRET)


def test_attempt_lost_in_a_crash_is_retried_after_its_lease(make_store: Any, receiver: Receiver) -> None:
    crashed = make_store(lease_seconds=30)
    delivery_id = crashed.enqueue(make_delivery(receiver.url()), now=100.0)
    claim = crashed.claim(now=100.0)  # a worker takes the attempt ... and the process dies
    assert claim is not None and claim.attempt == 1
    crashed.close()
    store = make_store(lease_seconds=30)
    record = store.get(delivery_id)
    assert record is not None and record.in_flight and record.state == "pending"
    assert store.run_due(now=129.0) == 0  # lease still held
    assert store.next_due_at() == 130.0
    assert store.run_due(now=130.1) == 0  # lease expired: attempt 1 settled as lost, retry after delays[1]
    assert store.run_due(now=130.2) == 1
    record = store.get(delivery_id)
    assert record is not None and record.state == "delivered"
    assert [a.outcome for a in record.attempts] == ["lost", "delivered"]
    assert len(receiver.requests) == 1


def test_late_finish_after_lost_lease_does_not_move_the_delivery(make_store: Any, receiver: Receiver) -> None:
    store = make_store(lease_seconds=10)
    delivery_id = store.enqueue(make_delivery(receiver.url()), now=0.0)
    stale = store.claim(now=0.0)
    assert stale is not None
    fresh = store.claim(now=11.0)  # settles the stale lease as lost (retry due at 10.2), then claims
    assert fresh is not None and fresh.attempt == 2
    store.finish(stale, AttemptResult(False, 500, "HTTP 500"), now=12.0)  # fenced out by the token
    record = store.get(delivery_id)
    assert record is not None and record.in_flight and record.state == "pending"
    store.finish(fresh, AttemptResult(True, 200), now=12.0)
    assert state_of(store, delivery_id) == "delivered"


def test_concurrent_workers_never_share_an_attempt(make_sqlite_store: Any, receiver: Receiver) -> None:
    receiver.delay = 0.05
    stores = [make_sqlite_store(), make_sqlite_store()]  # two store objects over one file, like two processes
    ids = [stores[0].enqueue(make_delivery(receiver.url(f"/hook/{i}"))) for i in range(24)]
    workers = [DeliveryWorker(s, threads=4).start() for s in stores]
    try:
        poll_until(lambda: all(state_of(stores[1], i) == "delivered" for i in ids), "every delivery",
                   timeout=120)  # a hang guard
    finally:
        for worker in workers:
            assert worker.stop(timeout=60)
    paths = Counter(r.path for r in receiver.requests)
    assert len(paths) == 24 and set(paths.values()) == {1}
    for delivery_id in ids:
        record = stores[0].get(delivery_id)
        assert record is not None and len(record.attempts) == 1


def test_unreadable_row_is_dead_lettered_not_retried_forever(make_store: StoreMaker, receiver: Receiver) -> None:
    store = make_store()
    broken = store.enqueue(make_delivery(receiver.url()))
    fine = store.enqueue(make_delivery(receiver.url()))
    make_store.corrupt_spec(broken)
    assert store.run_due() == 1
    assert (state_of(store, broken), state_of(store, fine)) == ("dead", "delivered")


def test_store_from_config(tmp_path: Path) -> None:
    from dss.config import Config

    config = Config.from_env({"DSS_DATA_DIR": str(tmp_path), "DSS_NOTIFY_DELAYS": "0,5",
                              "DSS_CALLBACK_ALLOWLIST": "localhost"})
    with DeliveryStore.from_config(config) as store:
        assert store.delays == (0, 5) and store.lease_seconds == 90
    assert (tmp_path / "notify.sqlite3").stat().st_mode & 0o777 == 0o600


def test_the_configuration_chooses_the_store(tmp_path: Path, aws_env: str) -> None:
    from dss.config import Config

    env = {"DSS_DATA_DIR": str(tmp_path), "DSS_NOTIFY_DELAYS": "0,5", "DSS_NOTIFY_TIMEOUT": "7"}
    with open_delivery_store(Config.from_env(env)) as embedded:
        assert isinstance(embedded, DeliveryStore)
    assert (tmp_path / "deliveries.sqlite3").exists()
    cloud_env = {**env, "DSS_TABLES_URL": "dynamodb://", "DSS_DEPLOYMENT_STAGE": f"t{uuid.uuid4().hex[:8]}"}
    with open_delivery_store(Config.from_env(cloud_env), create_if_missing=True) as cloud:
        assert isinstance(cloud, DynamoDBDeliveryStore)
        assert cloud.table_name == f"dss-{cloud_env['DSS_DEPLOYMENT_STAGE']}-deliveries"
        assert cloud.delays == (0, 5) and cloud.lease_seconds == 37
        assert cloud.next_due_at() is None


def test_enqueue_is_idempotent_per_event(make_store: Any, receiver: Receiver) -> None:
    store = make_store()
    delivery = make_delivery(receiver.url())
    assert store.enqueue(delivery) == store.enqueue(delivery)
    assert store.run_due() == 1
    assert len(store.deliveries(delivery.subscription_id)) == 1


def test_delivery_log_for_the_owner(make_store: Any, receiver: Receiver) -> None:
    store = make_store(delays=(0, 60))
    subscription_id = str(uuid.uuid4())
    receiver.fail(1)
    ids = [store.enqueue(make_delivery(receiver.url(), subscription_id=subscription_id), now=float(t))
           for t in range(3)]
    store.run_due(now=10.0)
    log = store.deliveries(subscription_id)
    assert [r.delivery_id for r in log] == ids[::-1]  # newest first
    failed = next(r for r in log if r.state == "pending")
    assert failed.next_attempt_at == 70.0 and failed.attempts[0].status_code == 500
    assert {r.state for r in log} == {"pending", "delivered"}
    assert store.deliveries(subscription_id, owner="someone@else.org") == []
    assert len(store.deliveries(subscription_id, limit=2)) == 2
    assert [r.delivery_id for r in store.deliveries(subscription_id, before=1.0)] == [ids[0]]
    assert len(store.deliveries(subscription_id, state="pending")) == 1
    json.dumps([r.to_json() for r in log])
    assert store.cancel(subscription_id) == 1
    assert {r.state for r in store.deliveries(subscription_id)} == {"dead", "delivered"}
    assert store.prune(finished_before=float("inf")) == 3
    assert store.deliveries(subscription_id) == []


def test_redirects_are_not_followed(make_sqlite_store: Any, receiver: Receiver) -> None:
    store = make_sqlite_store(delays=(0,))
    receiver.status = 302
    receiver.response_headers = {"Location": receiver.url("/elsewhere")}
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    store.run_due()
    record = store.get(delivery_id)
    assert record is not None and record.state == "dead"
    assert record.attempts[0].status_code == 302
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_slow_receiver_times_out(make_sqlite_store: Any, receiver: Receiver) -> None:
    store = make_sqlite_store(delays=(0,), timeout=0.3)
    receiver.delay = 1.0
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    store.run_due()
    record = store.get(delivery_id)
    assert record is not None and "Timeout" in (record.attempts[0].error or "")


# -- the background worker -------------------------------------------------------------------------

def test_worker_wakes_on_enqueue_and_stops_promptly(make_store: Any, receiver: Receiver) -> None:
    store = make_store()
    worker = DeliveryWorker(store, threads=3, max_sleep=600).start()
    time.sleep(0.1)  # let every thread go to sleep
    started = time.monotonic()
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    # Threads sleep up to max_sleep=600 s: finishing well within that shows they woke (bounds generous
    # for a loaded machine; speed is `make bench`'s business).
    poll_until(lambda: state_of(store, delivery_id) == "delivered", "the delivery", timeout=120)
    assert time.monotonic() - started < 120
    started = time.monotonic()
    assert worker.stop(timeout=120)
    assert time.monotonic() - started < 120
    assert not worker.running
    assert not any(t.name.startswith("dss-notify") for t in threading.enumerate())


# -- draining until a deadline (what the notify Lambda does) ------------------------------------------

class Gate:
    """A transport around the real one that holds each attempt until ``parties`` attempts are in flight
    together (so a run that is not that parallel fails, with no timing involved) and records the peak."""

    def __init__(self, parties: int) -> None:
        self._inner = HttpTransport(timeout=TIMEOUT, allowlist=LOOPBACK)
        self._barrier = threading.Barrier(parties, timeout=30)
        self._lock = threading.Lock()
        self.active = self.peak = 0

    def __call__(self, delivery: Delivery, attempt: int) -> AttemptResult:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            self._barrier.wait()
            return self._inner(delivery, attempt)
        finally:
            with self._lock:
                self.active -= 1


def no_delivery_threads_left() -> bool:
    return not any(t.name.startswith("dss-notify-due") for t in threading.enumerate())


def test_deliver_due_runs_attempts_in_parallel_up_to_the_bound(make_store: StoreMaker, receiver: Receiver) -> None:
    gate = Gate(parties=3)
    store = make_store(transport=gate)
    ids = [store.enqueue(make_delivery(receiver.url(f"/hook/{i}"))) for i in range(6)]
    run = deliver_due(store, time.monotonic() + 120, concurrency=3)
    assert run.to_json() == {"attempts": 6, "delivered": 6, "failed": 0, "dead": 0, "errors": 0,
                             "deadline_reached": False}
    assert gate.peak == 3
    assert {state_of(store, i) for i in ids} == {"delivered"}
    assert sorted(r.path for r in receiver.requests) == sorted(f"/hook/{i}" for i in range(6))
    assert no_delivery_threads_left()


def test_deliver_due_retries_what_falls_due_while_it_runs(make_store: StoreMaker, receiver: Receiver) -> None:
    store = make_store(delays=(0, 0, 3600))
    receiver.fail(2)
    ids = [store.enqueue(make_delivery(receiver.url())) for _ in range(3)]
    run = deliver_due(store, time.monotonic() + 120, concurrency=2)
    assert (run.attempts, run.delivered, run.failed, run.dead) == (5, 3, 2, 0)
    assert {state_of(store, i) for i in ids} == {"delivered"}
    assert store.next_due_at() is None


def test_deliver_due_counts_dead_letters_and_leaves_later_retries(make_store: StoreMaker, receiver: Receiver) -> None:
    clock = [1000.0]
    store = make_store(delays=(0, 3600), clock=lambda: clock[0])
    receiver.fail(100)
    first = store.enqueue(make_delivery(receiver.url()))
    run = deliver_due(store, time.monotonic() + 120)
    assert (run.attempts, run.failed, run.dead) == (1, 1, 0)
    assert store.next_due_at() == 4600.0  # the retry is the job of an invocation an hour later
    clock[0] = 4600.0
    second = store.enqueue(make_delivery(receiver.url()))
    run = deliver_due(store, time.monotonic() + 120)
    assert (run.attempts, run.failed, run.dead) == (2, 1, 1)
    assert (state_of(store, first), state_of(store, second)) == ("dead", "pending")


def test_deliver_due_stops_claiming_at_the_deadline(make_store: StoreMaker, receiver: Receiver) -> None:
    store = make_store()
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    run = deliver_due(store, time.monotonic() - 1)
    assert run.attempts == 0 and run.deadline_reached
    assert state_of(store, delivery_id) == "pending" and receiver.requests == []
    assert no_delivery_threads_left()


def test_overlapping_runs_never_share_an_attempt(make_store: StoreMaker, receiver: Receiver) -> None:
    """Two notify invocations at once (an invocation may outlast the one-minute schedule)."""
    receiver.delay = 0.05
    stores = [make_store(), make_store()]
    ids = [stores[0].enqueue(make_delivery(receiver.url(f"/hook/{i}"))) for i in range(16)]
    runs: list[Any] = []
    threads = [threading.Thread(target=lambda s=s: runs.append(deliver_due(s, time.monotonic() + 120, concurrency=4)))
               for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(run.delivered for run in runs) == 16 and sum(run.attempts for run in runs) == 16
    assert {state_of(stores[1], i) for i in ids} == {"delivered"}
    paths = Counter(r.path for r in receiver.requests)
    assert len(paths) == 16 and set(paths.values()) == {1}


# -- callback URL safety ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://127.9.9.9:8080/", "http://10.1.2.3/", "http://192.168.0.1/",
    "http://172.16.5.4/", "http://[::1]/", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://0.0.0.0/", "http://[::]/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://240.0.0.1/", "http://100.64.0.1/", "http://[fc00::1]/",
    "http://[2002:a00:1::1]/", "http://[64:ff9b::7f00:1]/", "http://2130706433/", "http://localhost:9/",
])
def test_non_public_callbacks_are_refused(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL):
        check_callback_url(url, allowlist=None)


@pytest.mark.parametrize(("url", "allowlist"), [
    ("http://127.0.0.1:5000/hook", "127.0.0.1/32"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1/32"),
    ("http://10.1.2.3/", "127.0.0.1/32,localhost,10.0.0.0/8"),
    ("http://[::1]/", "::1"),
    ("http://169.254.169.254/", ["169.254.0.0/16"]),
    ("http://localhost:9/", "localhost"),
    ("https://LOCALHOST./x", "localhost"),
])
def test_allow_list_admits_private_callbacks(url: str, allowlist: Any) -> None:
    target = check_callback_url(url, allowlist)
    assert target.addresses


@pytest.mark.parametrize("url", ["ftp://example.org/", "file:///etc/passwd", "javascript:alert(1)", "http:///x",
                                 "http://[::1/", "gopher://127.0.0.1/"])
def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(UnsafeCallbackURL):
        check_callback_url(url, "127.0.0.1/32,localhost")


def test_public_addresses_pass_without_an_allow_list() -> None:
    target = check_callback_url("https://hooks.example:8443/x", resolver=lambda host, port: ["93.184.216.34"])
    assert (target.host, target.port, target.addresses) == ("hooks.example", 8443, ("93.184.216.34",))
    assert check_callback_url("http://[2606:4700::1]/").addresses == ("2606:4700::1",)


def test_one_private_record_is_enough_to_refuse() -> None:
    with pytest.raises(UnsafeCallbackURL):
        check_callback_url("http://hooks.example/", resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"])


def test_bad_allow_list_entry() -> None:
    with pytest.raises(ValueError):
        AllowList.parse("10.0.0.0/33")


def test_delivery_time_check_refuses_without_connecting(make_sqlite_store: Any, receiver: Receiver) -> None:
    store = make_sqlite_store(delays=(0,), allowlist=None)
    delivery_id = store.enqueue(make_delivery(receiver.url()))
    store.run_due()
    record = store.get(delivery_id)
    assert record is not None and record.state == "dead"
    assert (record.attempts[0].error or "").startswith("refused:")
    assert receiver.requests == []


def test_connection_goes_to_the_checked_address(make_sqlite_store: Any, receiver: Receiver) -> None:
    """The host never resolves for real: delivery only works because the transport connects to the
    address the check approved (no second DNS lookup to rebind)."""
    answers = {"hooks.example": ["127.0.0.1"]}
    transport = HttpTransport(timeout=TIMEOUT, allowlist=LOOPBACK, resolver=lambda host, port: answers[host])
    store = make_sqlite_store(transport=transport, delays=(0, 0))
    url = f"http://hooks.example:{receiver.port}/hook"
    delivery = make_delivery(url, signature_format="rfc9421")
    first = store.enqueue(delivery)
    assert store.run_due() == 1 and state_of(store, first) == "delivered"
    [request] = receiver.requests
    assert request.headers["Host"] == f"hooks.example:{receiver.port}"
    verify_rfc9421(request, key_id=delivery.key_id)
    answers["hooks.example"] = ["10.0.0.1"]  # DNS changed after the subscription was accepted
    second = store.enqueue(make_delivery(url))
    store.run_due()
    record = store.get(second)
    assert record is not None and record.state == "dead" and "non-public" in (record.last_error or "")
    assert len(receiver.requests) == 1


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(make_sqlite_store: Any,
                                                                          tmp_path: Path) -> None:
    context, ca_file = self_signed_tls(tmp_path, "hooks.example")
    with Receiver(ssl_context=context) as tls:
        transport = HttpTransport(timeout=TIMEOUT, allowlist=LOOPBACK, resolver=lambda host, port: ["127.0.0.1"],
                                  verify=str(ca_file))
        store = make_sqlite_store(transport=transport, delays=(0,))
        good = store.enqueue(make_delivery(f"https://hooks.example:{tls.port}/hook"))
        wrong_name = store.enqueue(make_delivery(f"https://other.example:{tls.port}/hook"))
        store.run_due()
        assert state_of(store, good) == "delivered"
        record = store.get(wrong_name)
        assert record is not None and record.state == "dead" and "SSLError" in (record.last_error or "")
        [request] = tls.requests
        assert request.headers["Host"] == f"hooks.example:{tls.port}"
        verify_cavage(request, SECRET)


# -- secrets -----------------------------------------------------------------------------------------

def test_secret_stays_out_of_logs_reprs_and_the_delivery_log(make_store: StoreMaker, receiver: Receiver,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = make_store(delays=(0, 0))
    delivery = make_delivery(receiver.url())
    failing = make_delivery(receiver.url(), signature_format="rfc9421", subscription_id=delivery.subscription_id)
    ids = [store.enqueue(delivery), store.enqueue(failing)]
    receiver.fail(100)
    store.run_due()
    assert {state_of(store, i) for i in ids} == {"dead"}
    receiver.fail(0)
    third = store.enqueue(make_delivery(receiver.url(), subscription_id=delivery.subscription_id))
    claim = store.claim()
    assert claim is not None
    log = store.deliveries(delivery.subscription_id)
    texts = [caplog.text, repr(delivery), str(delivery), repr(claim), str(delivery.hmac_secret_key),
             json.dumps(delivery.to_json()), json.dumps([r.to_json() for r in log]), repr(log)]
    for text in texts:
        assert SECRET not in text
    assert delivery.hmac_secret_key is not None and delivery.hmac_secret_key.reveal() == SECRET.encode()
    secrets = make_store.stored_secrets()
    assert secrets[ids[0]] is None and secrets[ids[1]] is None  # wiped once finished
    assert secrets[third] == SECRET.encode()  # still needed for the pending attempt
