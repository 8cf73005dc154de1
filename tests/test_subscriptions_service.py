"""SubscriptionService and Notifier over real ports: a SQLite table, the embedded search index, a SQLite
delivery store, and a real HTTP receiver on loopback."""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dss.errors import Forbidden, IllegalArguments, NotFound, TooManySubscriptions
from dss.index.backend import QueryError, SearchIndex, open_search_index
from dss.notify import DeliveryStore, UnsafeCallbackURL
from dss.subscriptions import (
    InvalidAttachmentExpression,
    InvalidAttachmentName,
    InvalidJMESPath,
    Subscription,
    SubscriptionService,
    SubscriptionType,
)
from dss.subscriptions.notifier import ATTACHMENTS_LIMIT, Notifier, evaluate_attachments
from dss.tables import Table, TableError, open_table
from dss.tables.sqlite import SQLiteTable
from tests.infra.receivers import Receiver, verify_cavage

OWNER = "owner@example.org"
OTHER = "other@example.org"
SECRET = "never-show-this-secret"
LOOPBACK = "127.0.0.1/32"
API = "https://dss.example.org"
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z$")


def bundle_document(short_name: str = "abc", version: str = "2024-01-01T000000.000000Z") -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "state": "new",
            "manifest": {"version": version, "files": [{"name": "project_0.json", "indexed": True}]},
            "files": {"project_json": [{"project_core": {"project_short_name": short_name}}]}}


@pytest.fixture
def table(tmp_path: Path) -> Iterator[Table]:
    with open_table(f"sqlite://{tmp_path / 'tables.sqlite3'}", "dss-test-subscriptions") as t:
        yield t


@pytest.fixture
def search(tmp_path: Path) -> Iterator[SearchIndex]:
    with open_search_index(f"sqlite://{tmp_path / 'search'}") as index:
        yield index


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DeliveryStore]:
    # A generous request timeout: the receiver runs in this (perhaps busy) process, and an attempt that timed
    # out would be retried, making a second request where the tests expect exactly one.
    with DeliveryStore(tmp_path / "deliveries.sqlite3", delays=(0, 0.2), timeout=30.0, allowlist=LOOPBACK) as s:
        yield s


@pytest.fixture
def service(table: Table, search: SearchIndex, store: DeliveryStore) -> SubscriptionService:
    return SubscriptionService(table, search, allowlist=LOOPBACK, deliveries=store)


@pytest.fixture
def notifier(service: SubscriptionService, store: DeliveryStore) -> Notifier:
    return Notifier(service, store, api_base=API + "/")


def jmespath_body(url: str = "http://127.0.0.1:9/hook", **fields: Any) -> dict[str, Any]:
    return {"callback_url": url, **fields}


def es_body(url: str = "http://127.0.0.1:9/hook", short_name: str = "abc", **fields: Any) -> dict[str, Any]:
    query = {"query": {"match": {"files.project_json.project_core.project_short_name": short_name}}}
    return {"callback_url": url, "es_query": query, **fields}


def matched_ids(service: SubscriptionService, document: dict[str, Any], replica: str = "aws") -> set[str]:
    return {s.uuid for s in service.matching(replica, document)}


# --- creation and validation ----------------------------------------------------------------------------

def test_put_returns_the_subscription_without_its_secret(service: SubscriptionService, table: Table) -> None:
    shown = service.put("aws", OWNER, jmespath_body(jmespath_query="uuid", hmac_secret_key=SECRET,
                                                     hmac_key_id="my-key", method="PUT"))
    assert shown == {"uuid": shown["uuid"], "owner": OWNER, "replica": "aws", "callback_url": "http://127.0.0.1:9/hook",
                     "jmespath_query": "uuid", "method": "PUT", "hmac_key_id": "my-key"}
    stored = table.get(f"aws:{OWNER}", shown["uuid"])
    assert stored is not None and stored["hmac_secret_key"] == SECRET  # kept, to sign with
    assert service.get("aws", OWNER, shown["uuid"], "jmespath") == shown
    assert service.find("aws", OWNER, "jmespath") == [shown]


def test_the_kind_follows_a_truthy_es_query(service: SubscriptionService) -> None:
    es = service.put("aws", OWNER, es_body(jmespath_query="uuid"))
    assert "jmespath_query" not in es  # an elasticsearch subscription keeps only its own kind's query
    plain = service.put("aws", OWNER, jmespath_body(es_query={}))
    assert "es_query" not in plain
    assert [s["uuid"] for s in service.find("aws", OWNER, "elasticsearch")] == [es["uuid"]]
    assert [s["uuid"] for s in service.find("aws", OWNER, "jmespath")] == [plain["uuid"]]
    with pytest.raises(NotFound):
        service.get("aws", OWNER, es["uuid"], "jmespath")


@pytest.mark.parametrize("body, error", [
    (jmespath_body(jmespath_query="files.[?"), InvalidJMESPath),
    (jmespath_body(attachments={"_errors": {"type": "jmespath", "expression": "uuid"}}), InvalidAttachmentName),
    (jmespath_body(attachments={"x": {"type": "jmespath", "expression": "]["}}), InvalidAttachmentExpression),
    (es_body(attachments={"_x": {"type": "jmespath", "expression": "uuid"}}), InvalidAttachmentName),
    (jmespath_body(hmac_key_id='bad"id'), IllegalArguments),
    (jmespath_body(method="GET"), IllegalArguments),
    (jmespath_body(signature_format="nope"), IllegalArguments),
    (jmespath_body(hmac_secret_key=12345), IllegalArguments),
    ({"jmespath_query": "uuid"}, IllegalArguments),
])
def test_invalid_subscriptions_are_refused_and_not_stored(service: SubscriptionService, body: dict,
                                                          error: type[Exception]) -> None:
    with pytest.raises(error):
        service.put("aws", OWNER, body)
    assert service.find("aws", OWNER, "jmespath") == service.find("aws", OWNER, "elasticsearch") == []


def test_a_bad_es_query_is_a_query_error_and_leaves_nothing(service: SubscriptionService, search: SearchIndex) -> None:
    with pytest.raises(QueryError):
        service.put("aws", OWNER, {"callback_url": "http://127.0.0.1:9/", "es_query": {"query": {"bogus": {}}}})
    assert service.find("aws", OWNER, "elasticsearch") == []
    assert search.percolate("aws", bundle_document()) == []


def test_callback_urls_must_be_public_unless_allow_listed(table: Table, search: SearchIndex) -> None:
    strict = SubscriptionService(table, search)
    for url in ("http://127.0.0.1:8080/hook", "http://10.1.2.3/hook", "http://[::1]/hook", "http://169.254.169.254/"):
        with pytest.raises(UnsafeCallbackURL):
            strict.put("aws", OWNER, jmespath_body(url))
    # A name is checked by what it resolves to (resolver injected: no DNS in tests).
    resolving = SubscriptionService(table, search, resolver=lambda host, port: ["192.168.0.7"])
    with pytest.raises(UnsafeCallbackURL):
        resolving.put("aws", OWNER, jmespath_body("https://hooks.example.org/x"))
    public = SubscriptionService(table, search, resolver=lambda host, port: ["93.184.216.34"])
    assert public.put("aws", OWNER, jmespath_body("https://hooks.example.org/x"))["uuid"]
    allowed = SubscriptionService(table, search, allowlist=LOOPBACK)
    assert allowed.put("aws", OWNER, jmespath_body("http://127.0.0.1:8080/hook"))["uuid"]


def test_the_limit_is_per_owner_replica_and_kind(table: Table, search: SearchIndex) -> None:
    service = SubscriptionService(table, search, allowlist=LOOPBACK, limit=3)
    # the original's check is `count > limit`, so an owner reaches limit + 1 before a refusal
    created = [service.put("aws", OWNER, jmespath_body())["uuid"] for _ in range(4)]
    with pytest.raises(TooManySubscriptions) as refused:
        service.put("aws", OWNER, jmespath_body())
    assert refused.value.code == "not_acceptable"
    service.put("aws", OTHER, jmespath_body())
    service.put("gcp", OWNER, jmespath_body())
    service.put("aws", OWNER, es_body())
    service.delete("aws", OWNER, created[0], "jmespath")
    service.put("aws", OWNER, jmespath_body())  # room again
    assert len(service.find("aws", OWNER, "jmespath")) == 4


# --- ownership -----------------------------------------------------------------------------------------

def test_others_see_404_for_jmespath_and_403_for_elasticsearch(service: SubscriptionService) -> None:
    plain = service.put("aws", OWNER, jmespath_body())["uuid"]
    es = service.put("aws", OWNER, es_body())["uuid"]
    with pytest.raises(NotFound):
        service.get("aws", OTHER, plain, "jmespath")
    with pytest.raises(NotFound):
        service.delete("aws", OTHER, plain, "jmespath")
    with pytest.raises(Forbidden):
        service.get("aws", OTHER, es, "elasticsearch")
    with pytest.raises(Forbidden):
        service.delete("aws", OTHER, es, "elasticsearch")
    with pytest.raises(NotFound):
        service.get("gcp", OWNER, es, "elasticsearch")  # the same uuid in another replica does not exist
    with pytest.raises(NotFound):
        service.get("aws", OTHER, str(uuid.uuid4()), "elasticsearch")
    assert service.find("aws", OTHER, "jmespath") == []
    assert service.get("aws", OWNER, plain.upper(), "jmespath")["uuid"] == plain  # uuids are case-insensitive


# --- matching ------------------------------------------------------------------------------------------

def test_jmespath_matching(service: SubscriptionService) -> None:
    everything = service.put("aws", OWNER, jmespath_body())["uuid"]
    abc = service.put("aws", OWNER, jmespath_body(
        jmespath_query="files.project_json[0].project_core.project_short_name == 'abc'"))["uuid"]
    xyz = service.put("aws", OTHER, jmespath_body(
        jmespath_query="files.project_json[0].project_core.project_short_name == 'xyz'"))["uuid"]
    service.put("aws", OWNER, jmespath_body(jmespath_query="length(`5`)"))  # a type error: never matches
    service.put("gcp", OWNER, jmespath_body())  # another replica
    assert matched_ids(service, bundle_document("abc")) == {everything, abc}
    assert matched_ids(service, bundle_document("xyz")) == {everything, xyz}
    assert matched_ids(service, bundle_document("abc"), "gcp") != set()
    assert all(s.replica == "gcp" for s in service.matching("gcp", bundle_document()))


def test_elasticsearch_matching_percolates(service: SubscriptionService) -> None:
    abc = service.put("aws", OWNER, es_body(short_name="abc"))["uuid"]
    service.put("aws", OWNER, es_body(short_name="xyz"))
    service.put("gcp", OWNER, es_body(short_name="abc"))
    assert matched_ids(service, bundle_document("abc")) == {abc}
    assert matched_ids(service, bundle_document("nothing")) == set()


def test_matching_returns_secrets_to_sign_with(service: SubscriptionService) -> None:
    service.put("aws", OWNER, jmespath_body(hmac_secret_key=SECRET))
    (subscription,) = service.matching("aws", bundle_document())
    assert subscription.hmac_secret_key is not None and subscription.hmac_secret_key.reveal() == SECRET.encode()
    assert SECRET not in repr(subscription)


def test_delete_stops_matching_removes_the_query_and_cancels_deliveries(
        service: SubscriptionService, search: SearchIndex, store: DeliveryStore, notifier: Notifier) -> None:
    es = service.put("aws", OWNER, es_body())["uuid"]
    plain = service.put("aws", OWNER, jmespath_body())["uuid"]
    document = bundle_document()
    assert notifier.notify("aws", document["uuid"], "v1", "CREATE", document) == 2
    service.delete("aws", OWNER, es, "elasticsearch")
    service.delete("aws", OWNER, plain, "jmespath")
    assert search.percolate("aws", document) == []
    assert service.matching("aws", document) == []
    assert [d.state for d in store.deliveries(es)] == ["dead"]
    assert [d.last_error for d in store.deliveries(plain)] == ["subscription deleted"]
    with pytest.raises(NotFound):
        service.delete("aws", OWNER, plain, "jmespath")


def test_changes_made_by_another_process_are_seen_at_the_next_event(tmp_path: Path, search: SearchIndex) -> None:
    url = f"sqlite://{tmp_path / 'shared.sqlite3'}"
    with open_table(url, "dss-test-subscriptions") as one, open_table(url, "dss-test-subscriptions") as two:
        writer = SubscriptionService(one, search, allowlist=LOOPBACK)
        reader = SubscriptionService(two, search, allowlist=LOOPBACK)
        assert reader.matching("aws", bundle_document()) == []  # builds (an empty) snapshot
        created = writer.put("aws", OWNER, jmespath_body(jmespath_query="state == 'new'"))["uuid"]
        assert matched_ids(reader, bundle_document()) == {created}
        writer.delete("aws", OWNER, created, "jmespath")
        assert matched_ids(reader, bundle_document()) == set()


def test_unreadable_records_are_skipped_not_fatal(service: SubscriptionService, table: Table) -> None:
    good = service.put("aws", OWNER, jmespath_body())["uuid"]
    table.put(f"aws:{OWNER}", "broken-1", {"uuid": "broken-1", "subscription_type": "jmespath", "replica": "aws",
                                            "owner": OWNER, "callback_url": "x", "jmespath_query": "[["})
    table.put(f"aws:{OWNER}", "broken-2", {"uuid": "broken-2", "subscription_type": "telepathy"})
    service.put("aws", OWNER, jmespath_body())  # a new generation: the snapshot is rebuilt with the bad rows
    assert good in matched_ids(service, bundle_document())


def test_a_failed_store_rolls_the_percolator_query_back(tmp_path: Path, search: SearchIndex) -> None:
    class FailingTable(SQLiteTable):
        def _put(self, hash_key: str, sort_key: str, body: dict[str, Any], if_absent: bool) -> None:
            if hash_key != "_meta":
                raise TableError("disk full")
            super()._put(hash_key, sort_key, body, if_absent)

    with FailingTable(tmp_path / "t.sqlite3", "dss-test-subscriptions") as table:
        service = SubscriptionService(table, search, allowlist=LOOPBACK)
        with pytest.raises(TableError):
            service.put("aws", OWNER, es_body())
    assert search.percolate("aws", bundle_document()) == []


def test_matching_thousands_of_stored_subscriptions(table: Table, search: SearchIndex) -> None:
    for i in range(2_000):  # the speed at 10,000 is measured by `make bench`
        subscription = Subscription(
            uuid=str(uuid.uuid4()), owner=f"user{i % 500}@example.org", replica="aws",
            subscription_type=SubscriptionType.jmespath, callback_url="http://127.0.0.1:9/",
            jmespath_query=f"files.project_json[0].project_core.project_short_name == 'project-{i}'")
        table.put(f"aws:{subscription.owner}", subscription.uuid, subscription.to_record())
    service = SubscriptionService(table, search, allowlist=LOOPBACK)
    service.put("aws", OWNER, jmespath_body())  # one without a query, and a generation to build after
    document = bundle_document("project-42")
    assert len(service.matching("aws", document)) == 2  # the first call builds the snapshot
    assert len(service.matching("aws", document)) == 2  # later calls reuse it (speed: `make bench`)


# --- the notifier --------------------------------------------------------------------------------------

def test_jmespath_payload_is_delivered_signed(service: SubscriptionService, notifier: Notifier, store: DeliveryStore,
                                              receiver: Receiver) -> None:
    sub = service.put("aws", OWNER, jmespath_body(receiver.url(), jmespath_query="state == 'new'",
                                                  hmac_secret_key=SECRET,
                                                  attachments={"name": {"type": "jmespath", "expression":
                                                                        "files.project_json[0].project_core"}}))
    document = bundle_document("abc")
    assert notifier.notify("aws", document["uuid"], "2024-01-01T000000.000000Z", "CREATE", document) == 1
    assert store.run_due() == 1
    (request,) = receiver.wait_for(1)
    verify_cavage(request, SECRET, f"hca-dss:{sub['uuid']}")
    payload = json.loads(request.body)
    assert payload == {
        "transaction_id": payload["transaction_id"], "subscription_id": sub["uuid"], "event_type": "CREATE",
        "match": {"bundle_uuid": document["uuid"], "bundle_version": "2024-01-01T000000.000000Z"},
        "bundle_url": f"{API}/v1/bundles/{document['uuid']}?version=2024-01-01T000000.000000Z&replica=aws",
        "dss_api": API, "event_timestamp": payload["event_timestamp"], "jmespath_query": "state == 'new'",
        "attachments": {"name": {"project_short_name": "abc"}}}
    assert VERSION_RE.match(payload["event_timestamp"])
    uuid.UUID(payload["transaction_id"])


def test_tombstones_carry_no_jmespath_attachments(service: SubscriptionService, notifier: Notifier,
                                                 store: DeliveryStore, receiver: Receiver) -> None:
    service.put("aws", OWNER, jmespath_body(receiver.url(), attachments={"u": {"type": "jmespath",
                                                                               "expression": "uuid"}}))
    tombstone = {"email": "admin@example.org", "reason": "bad", "admin_deleted": True, "uuid": "b",
                 "manifest": {"version": None}}
    assert notifier.notify("aws", "b", "v1", "TOMBSTONE", tombstone) == 1
    store.run_due()
    payload = json.loads(receiver.wait_for(1)[0].body)
    assert payload["event_type"] == "TOMBSTONE"
    assert "attachments" not in payload and "jmespath_query" not in payload


def test_elasticsearch_payload(service: SubscriptionService, notifier: Notifier, store: DeliveryStore,
                               receiver: Receiver) -> None:
    body = es_body(receiver.url(), attachments={"short": {"type": "jmespath",
                                                          "expression": "files.project_json[0].project_core"}})
    sub = service.put("aws", OWNER, body)
    document = bundle_document("abc")
    assert notifier.notify("aws", document["uuid"], "v1", "CREATE", document) == 1
    store.run_due()
    (request,) = receiver.wait_for(1)
    assert "Authorization" not in request.headers  # no secret, no signature
    payload = json.loads(request.body)
    assert payload == {"transaction_id": payload["transaction_id"], "subscription_id": sub["uuid"],
                       "es_query": body["es_query"], "match": {"bundle_uuid": document["uuid"], "bundle_version": "v1"},
                       "attachments": {"short": {"project_short_name": "abc"}}}  # the original's v1 fields only


def test_multipart_and_custom_key_id(service: SubscriptionService, notifier: Notifier, store: DeliveryStore,
                                     receiver: Receiver) -> None:
    service.put("aws", OWNER, jmespath_body(receiver.url(), encoding="multipart/form-data", method="PUT",
                                            form_fields={"team": "lab"}, payload_form_field="notification",
                                            hmac_secret_key=SECRET, hmac_key_id="lab-key"))
    notifier.notify("aws", "b", "v1", "CREATE", bundle_document())
    store.run_due()
    (request,) = receiver.wait_for(1)
    assert request.method == "PUT"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="team"' in request.body and b'name="notification"' in request.body
    verify_cavage(request, SECRET, "lab-key")


def test_notifying_the_same_event_twice_queues_once(service: SubscriptionService, notifier: Notifier,
                                                    store: DeliveryStore) -> None:
    sub = service.put("aws", OWNER, jmespath_body())["uuid"]
    document = bundle_document()
    assert notifier.notify("aws", "b", "v1", "CREATE", document) == 1
    assert notifier.notify("aws", "b", "v1", "CREATE", document) == 1
    assert notifier.notify("aws", "b", "v1", "TOMBSTONE", document) == 1  # a different event
    assert sorted(d.event_id for d in store.deliveries(sub)) == ["b.v1:CREATE", "b.v1:TOMBSTONE"]


def test_no_subscribers_no_deliveries(notifier: Notifier) -> None:
    assert notifier.notify("aws", "b", "v1", "CREATE", bundle_document()) == 0


def test_unknown_event_types_are_refused(notifier: Notifier) -> None:
    with pytest.raises(ValueError):
        notifier.notify("aws", "b", "v1", "UPDATE", bundle_document())


def test_attachment_errors_and_size_limit() -> None:
    document = {"a": {"b": 1}, "big": "x" * ATTACHMENTS_LIMIT}
    result = evaluate_attachments({"ok": {"type": "jmespath", "expression": "a.b"},
                                   "bad": {"type": "jmespath", "expression": "length(a.b)"}}, document)
    assert result["ok"] == 1
    assert list(result["_errors"]) == ["bad"] and "length()" in result["_errors"]["bad"]
    too_large = evaluate_attachments({"all": {"type": "jmespath", "expression": "big"}}, document)
    size = len(json.dumps({"all": document["big"]}).encode())
    assert too_large == {"_errors": f"Attachments too large ({size} > 131072)"}
    exactly = {"all": {"type": "jmespath", "expression": "big"}}
    small = {"big": "x" * (ATTACHMENTS_LIMIT - len(json.dumps({"all": ""})))}
    assert evaluate_attachments(exactly, small) == {"all": small["big"]}  # 128 KiB exactly is allowed
