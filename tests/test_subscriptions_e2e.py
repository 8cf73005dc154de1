"""End to end: subscribe through the API, PUT (and delete) bundles through the API, and a real receiver
gets correctly signed notifications. The path is API → storage → event queue → index handler (embedded
search engine, percolation) → Notifier → delivery store → delivery worker → HTTP.

Signatures are checked with `requests-http-signature` 0.1.0, the library the original's subscribers use.
"""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests

from dss.identifiers import new_version
from tests.infra.delivery_stores import DELIVERY_STORES
from tests.infra.dss_server import ADMIN, DSSServer
from tests.infra.helpers import add_file, new_uuid, put_bundle
from tests.infra.opensearch import ALL_ENGINES
from tests.infra.receivers import Receiver, RecordedRequest, verify_cavage

SECRET = "e2e-hmac-secret"
SHORT_NAME_QUERY = "files.project_json[0].project_core.project_short_name == 'abc'"
ES_QUERY = {"query": {"match": {"files.project_json.project_core.project_short_name": "abc"}}}


@pytest.fixture
def dss_env(dss_env: dict[str, str], search_engine_env: dict[str, str],
            delivery_store_env: dict[str, str]) -> dict[str, str]:
    dss_env.update(search_engine_env)  # the embedded engine, or a real engine where ALL_ENGINES says so
    dss_env.update(delivery_store_env)  # the embedded default, or DynamoDB where DELIVERY_STORES says so
    dss_env["DSS_CALLBACK_ALLOWLIST"] = "127.0.0.1/32"
    dss_env["DSS_NOTIFY_DELAYS"] = "0,1,2"
    dss_env["DSS_NOTIFY_TIMEOUT"] = "30"  # a busy receiver answering late must not look like a failure
    return dss_env


def subscribe(dss: DSSServer, body: dict[str, Any], replica: str = "aws") -> str:
    response = requests.put(f"{dss.url}/v1/subscriptions", params={"replica": replica}, json=body,
                            headers=dss.auth(), timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def project_bundle(dss: DSSServer, short_name: str, bundle_uuid: str | None = None) -> tuple[str, str]:
    project = add_file(dss, json.dumps({"project_core": {"project_short_name": short_name,
                                                         "title": f"The {short_name} project"}}).encode(),
                       "project_0.json")
    bundle_uuid, version = bundle_uuid or new_uuid(), new_version()
    response = put_bundle(dss, [project], bundle_uuid, version)
    assert response.status_code == 201, response.text
    return bundle_uuid, version


def settle(dss: DSSServer) -> None:
    """Wait until every event (sync, index) has been handled."""
    dss.runtime.workers.drain(timeout=60)


def payloads(requests_: list[RecordedRequest]) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in requests_]


def quiet_for(receiver: Receiver, count: int, seconds: float = 1.5) -> None:
    """Nothing beyond ``count`` requests arrives within ``seconds`` (duplicates would show up here)."""
    time.sleep(seconds)
    assert len(receiver.requests) == count, payloads(receiver.requests)


def test_a_new_bundle_notifies_matching_jmespath_subscribers(dss: DSSServer, receiver: Receiver) -> None:
    matching = subscribe(dss, {"callback_url": receiver.url("/match"), "jmespath_query": SHORT_NAME_QUERY,
                               "hmac_secret_key": SECRET,
                               "attachments": {"title": {"type": "jmespath",
                                                         "expression": "files.project_json[0].project_core.title"}}})
    subscribe(dss, {"callback_url": receiver.url("/other"),
                    "jmespath_query": "files.project_json[0].project_core.project_short_name == 'xyz'"})
    bundle_uuid, version = project_bundle(dss, "abc")
    settle(dss)
    (request,) = receiver.wait_for(1, timeout=60)
    assert request.path == "/match" and request.method == "POST"
    verify_cavage(request, SECRET, f"hca-dss:{matching}")
    payload = json.loads(request.body)
    assert payload["subscription_id"] == matching and payload["event_type"] == "CREATE"
    assert payload["match"] == {"bundle_uuid": bundle_uuid, "bundle_version": version}
    assert payload["attachments"] == {"title": "The abc project"}
    assert payload["jmespath_query"] == SHORT_NAME_QUERY
    assert payload["dss_api"] == f"http://{dss.config.host}:{dss.config.port}"
    # The URL in the payload leads back to the bundle.
    bundle = requests.get(payload["bundle_url"], timeout=30)
    assert bundle.status_code == 200 and bundle.json()["bundle"]["version"] == version
    quiet_for(receiver, 1)


@ALL_ENGINES
def test_elasticsearch_subscribers_are_notified_through_percolation(dss: DSSServer, receiver: Receiver) -> None:
    sub_id = subscribe(dss, {"callback_url": receiver.url("/es"), "es_query": ES_QUERY, "hmac_secret_key": SECRET,
                             "hmac_key_id": "es-key"})
    project_bundle(dss, "xyz")  # does not match
    bundle_uuid, version = project_bundle(dss, "abc")
    settle(dss)
    (request,) = receiver.wait_for(1, timeout=60)
    verify_cavage(request, SECRET, "es-key")
    payload = json.loads(request.body)
    assert payload == {"transaction_id": payload["transaction_id"], "subscription_id": sub_id, "es_query": ES_QUERY,
                       "match": {"bundle_uuid": bundle_uuid, "bundle_version": version}}  # the original's v1 fields
    quiet_for(receiver, 1)


def test_each_replica_notifies_its_own_subscribers(dss: DSSServer, receiver: Receiver) -> None:
    subscribe(dss, {"callback_url": receiver.url("/aws")}, replica="aws")
    subscribe(dss, {"callback_url": receiver.url("/gcp")}, replica="gcp")
    bundle_uuid, version = project_bundle(dss, "abc")  # written to aws, synced to gcp
    settle(dss)
    received = receiver.wait_for(2, timeout=60)
    by_path = {r.path: json.loads(r.body) for r in received}
    assert set(by_path) == {"/aws", "/gcp"}
    assert by_path["/gcp"]["bundle_url"].endswith(f"/v1/bundles/{bundle_uuid}?version={version}&replica=gcp")
    quiet_for(receiver, 2)


def test_an_unversioned_tombstone_notifies_once_per_live_version(dss: DSSServer, receiver: Receiver) -> None:
    sub_id = subscribe(dss, {"callback_url": receiver.url(), "hmac_secret_key": SECRET,
                             "attachments": {"u": {"type": "jmespath", "expression": "uuid"}}})
    bundle_uuid, first = project_bundle(dss, "abc")
    _, second = project_bundle(dss, "abc", bundle_uuid)
    settle(dss)
    receiver.wait_for(2, timeout=60)
    deleted = requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"},
                              json={"reason": "withdrawn"}, headers=dss.auth(ADMIN), timeout=30)
    assert deleted.status_code == 200, deleted.text
    settle(dss)
    received = receiver.wait_for(4, timeout=60)
    for request in received:
        verify_cavage(request, SECRET, f"hca-dss:{sub_id}")
    tombstones = [p for p in payloads(received) if p["event_type"] == "TOMBSTONE"]
    assert sorted(p["match"]["bundle_version"] for p in tombstones) == sorted([first, second])
    assert all("attachments" not in p for p in tombstones)  # attachments are for CREATE only
    quiet_for(receiver, 4)


@DELIVERY_STORES
def test_a_failing_receiver_is_retried_and_the_log_shows_it(dss: DSSServer, receiver: Receiver) -> None:
    sub_id = subscribe(dss, {"callback_url": receiver.url()})
    receiver.fail(1)
    project_bundle(dss, "abc")
    settle(dss)
    first, second = receiver.wait_for(2, timeout=60)
    assert (first.answered, second.answered) == (500, 200)
    assert json.loads(first.body) == json.loads(second.body)  # the same notification, retried
    assert second.headers["X-dss-notify-attempt"] == "2"
    # The receiver has answered, but the worker records the outcome a moment later.
    deadline = time.monotonic() + 60
    while True:
        log = requests.get(f"{dss.url}/v1/subscriptions/{sub_id}/deliveries", params={"replica": "aws"},
                           headers=dss.auth(), timeout=30).json()["deliveries"]
        if [d["state"] for d in log] == ["delivered"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [d["state"] for d in log] == ["delivered"]
    assert [a["status_code"] for a in log[0]["attempts"]] == [500, 200]


def test_a_deleted_subscription_is_not_notified(dss: DSSServer, receiver: Receiver) -> None:
    sub_id = subscribe(dss, {"callback_url": receiver.url()})
    assert requests.delete(f"{dss.url}/v1/subscriptions/{sub_id}", params={"replica": "aws"},
                           headers=dss.auth(), timeout=30).status_code == 200
    project_bundle(dss, "abc")
    settle(dss)
    quiet_for(receiver, 0)


@ALL_ENGINES
def test_a_whole_bundle_delete_notifies_elasticsearch_subscribers_once_per_version(dss: DSSServer,
                                                                                   receiver: Receiver) -> None:
    bundle_uuid = new_uuid()
    es_query = {"query": {"term": {"uuid": bundle_uuid}}}
    attachments = {"deleted": {"type": "jmespath", "expression": "admin_deleted"},
                   "version": {"type": "jmespath", "expression": "manifest.version"}}
    sub_id = subscribe(dss, {"callback_url": receiver.url(), "es_query": es_query, "attachments": attachments})
    _, first = project_bundle(dss, "abc", bundle_uuid)
    _, second = project_bundle(dss, "abc", bundle_uuid)
    settle(dss)
    receiver.wait_for(2, timeout=60)
    deleted = requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"},
                              json={"reason": "withdrawn"}, headers=dss.auth(ADMIN), timeout=30)
    assert deleted.status_code == 200, deleted.text
    settle(dss)
    received = payloads(receiver.wait_for(4, timeout=60))
    for payload in received:  # exactly the original's v1 fields
        assert set(payload) == {"transaction_id", "subscription_id", "es_query", "match", "attachments"}, payload
        assert payload["subscription_id"] == sub_id and payload["es_query"] == es_query
        # a tombstone's document names the version it replaced, also for a whole-bundle tombstone
        assert payload["attachments"]["version"] == payload["match"]["bundle_version"]
    tombstones = sorted(p["match"]["bundle_version"] for p in received if p["attachments"]["deleted"] is True)
    assert tombstones == sorted([first, second])
    assert len({p["transaction_id"] for p in received}) == 4
    quiet_for(receiver, 4)
