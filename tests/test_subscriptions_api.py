"""/v1/subscriptions through the real HTTP API of a server on loopback, with real webhook receivers."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
import requests

from tests.infra.delivery_stores import DELIVERY_STORES
from tests.infra.dss_server import USER, DSSServer, base_env, start_server
from tests.infra.helpers import poll_until

if TYPE_CHECKING:
    from tests.infra.receivers import Receiver


OTHER = "other@example.org"
SECRET = "write-only-hmac-secret-0451"
LOOPBACK = "127.0.0.1/32"
HOOK = "http://127.0.0.1:9/hook"  # on loopback: needs the allow-list; never called in these tests
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z$")
ES_QUERY = {"query": {"match": {"files.project_json.project_core.project_short_name": "abc"}}}


@pytest.fixture
def dss_env(dss_env: dict[str, str], delivery_store_env: dict[str, str]) -> dict[str, str]:
    """The shared server environment, with loopback callbacks allowed (receivers live there)."""
    dss_env.update(delivery_store_env)  # the embedded default, or DynamoDB where DELIVERY_STORES says so
    dss_env["DSS_CALLBACK_ALLOWLIST"] = LOOPBACK
    dss_env["DSS_NOTIFY_DELAYS"] = "0,1,60"  # a third try late enough to cancel
    dss_env["DSS_NOTIFY_TIMEOUT"] = "30"  # a busy receiver answering late must not look like a failure
    return dss_env


class Client:
    """Just enough of a subscriptions client: each call is one real HTTP request."""

    def __init__(self, dss: DSSServer, email: str = USER, groups: tuple[str, ...] = ("hca",),
                 headers: dict[str, str] | None = None) -> None:
        self.url = f"{dss.url}/v1/subscriptions"
        self.headers = dss.auth(email, groups) if headers is None else headers

    def put(self, body: dict[str, Any], replica: str = "aws") -> requests.Response:
        return requests.put(self.url, params={"replica": replica}, json=body, headers=self.headers, timeout=30)

    def find(self, kind: str | None = None, replica: str = "aws") -> requests.Response:
        return requests.get(self.url, params=_params(replica, kind), headers=self.headers, timeout=30)

    def get(self, sub_id: str, kind: str | None = None, replica: str = "aws") -> requests.Response:
        return requests.get(f"{self.url}/{sub_id}", params=_params(replica, kind), headers=self.headers, timeout=30)

    def delete(self, sub_id: str, kind: str | None = None, replica: str = "aws") -> requests.Response:
        return requests.delete(f"{self.url}/{sub_id}", params=_params(replica, kind), headers=self.headers,
                               timeout=30)

    def deliveries(self, sub_id: str, kind: str | None = None, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}/{sub_id}/deliveries", params={**_params("aws", kind), **params},
                            headers=self.headers, timeout=30)


def _params(replica: str, kind: str | None) -> dict[str, str]:
    return {"replica": replica, **({"subscription_type": kind} if kind else {})}


def assert_problem(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text


@pytest.fixture
def client(dss: DSSServer) -> Client:
    return Client(dss)


# --- create, read, list, delete ---------------------------------------------------------------------------

def test_jmespath_subscription_lifecycle(client: Client) -> None:
    body = {"callback_url": HOOK, "jmespath_query": "files.project_json[0].project_core.project_short_name == 'abc'",
            "method": "PUT", "encoding": "multipart/form-data", "form_fields": {"a": "b"},
            "payload_form_field": "note", "hmac_secret_key": SECRET, "hmac_key_id": "key-1",
            "attachments": {"title": {"type": "jmespath", "expression": "files.project_json[0].project_core.title"}}}
    created = client.put(body)
    assert created.status_code == 201, created.text
    shown = created.json()
    expected = {k: v for k, v in body.items() if k != "hmac_secret_key"}
    assert shown == {"uuid": shown["uuid"], "owner": USER, "replica": "aws", **expected}
    uuid.UUID(shown["uuid"])

    got = client.get(shown["uuid"])
    assert got.status_code == 200 and got.json() == shown  # flat, not {"subscription": …}
    assert client.find().json() == {"subscriptions": [shown]}
    assert client.find("elasticsearch").json() == {"subscriptions": []}

    deleted = client.delete(shown["uuid"])
    assert deleted.status_code == 200
    assert VERSION_RE.match(deleted.json()["timeDeleted"])
    assert_problem(client.get(shown["uuid"]), 404, "not_found")
    assert_problem(client.delete(shown["uuid"]), 404, "not_found")
    assert client.find().json() == {"subscriptions": []}


def test_elasticsearch_subscription_lifecycle(client: Client) -> None:
    created = client.put({"callback_url": HOOK, "es_query": ES_QUERY, "hmac_secret_key": SECRET})
    assert created.status_code == 201, created.text
    shown = created.json()
    assert shown == {"uuid": shown["uuid"], "owner": USER, "replica": "aws", "callback_url": HOOK,
                     "es_query": ES_QUERY}
    assert client.get(shown["uuid"], "elasticsearch").json() == shown
    assert_problem(client.get(shown["uuid"]), 404, "not_found")  # the default kind is jmespath
    assert client.find("elasticsearch").json() == {"subscriptions": [shown]}
    assert client.find().json() == {"subscriptions": []}
    assert client.delete(shown["uuid"], "elasticsearch").status_code == 200
    assert_problem(client.get(shown["uuid"], "elasticsearch"), 404, "not_found")


def test_subscriptions_are_per_replica(client: Client) -> None:
    sub_id = client.put({"callback_url": HOOK}, replica="gcp").json()["uuid"]
    assert_problem(client.get(sub_id, replica="aws"), 404, "not_found")
    assert client.get(sub_id, replica="gcp").json()["replica"] == "gcp"
    assert client.find(replica="aws").json() == {"subscriptions": []}


# --- who may do what --------------------------------------------------------------------------------------

def test_owners_only_see_their_own(dss: DSSServer, client: Client) -> None:
    other = Client(dss, OTHER)
    plain = client.put({"callback_url": HOOK}).json()["uuid"]
    es = client.put({"callback_url": HOOK, "es_query": ES_QUERY}).json()["uuid"]
    assert_problem(other.get(plain), 404, "not_found")
    assert_problem(other.delete(plain), 404, "not_found")
    assert_problem(other.get(es, "elasticsearch"), 403, "Forbidden")
    assert_problem(other.delete(es, "elasticsearch"), 403, "Forbidden")
    assert_problem(other.deliveries(plain), 404, "not_found")
    assert_problem(other.deliveries(es, "elasticsearch"), 403, "Forbidden")
    assert other.find().json() == other.find("elasticsearch").json() == {"subscriptions": []}
    assert client.get(plain).status_code == client.get(es, "elasticsearch").status_code == 200


def test_group_public_is_enough(dss: DSSServer) -> None:
    public = Client(dss, groups=("public",))
    assert public.put({"callback_url": HOOK}).status_code == 201
    assert len(public.find().json()["subscriptions"]) == 1


def test_other_groups_are_forbidden(dss: DSSServer, client: Client) -> None:
    sub_id = client.put({"callback_url": HOOK}).json()["uuid"]
    outsider = Client(dss, groups=("dbio",))
    for response in (outsider.put({"callback_url": HOOK}), outsider.find(), outsider.get(sub_id),
                     outsider.delete(sub_id), outsider.deliveries(sub_id)):
        assert_problem(response, 403, "Forbidden")
    assert client.get(sub_id).status_code == 200


def test_no_token_is_401(dss: DSSServer) -> None:
    anonymous = Client(dss, headers={})
    sub_id = str(uuid.uuid4())
    for response in (anonymous.put({"callback_url": HOOK}), anonymous.find(), anonymous.get(sub_id),
                     anonymous.delete(sub_id), anonymous.deliveries(sub_id)):
        assert_problem(response, 401, "OAuthProblem")


def test_a_token_without_an_email_is_401(dss: DSSServer) -> None:
    kid, key = dss.runtime.keys.local_signing_key()
    now = int(time.time())
    claims = {"iss": dss.config.local_issuer, "sub": "robot", "aud": dss.config.audiences[0], "iat": now,
              "exp": now + 600, dss.config.group_claim: ["hca"]}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
    no_email = Client(dss, headers={"Authorization": f"Bearer {token}"})
    assert_problem(no_email.put({"callback_url": HOOK}), 401, "Unauthorized")
    assert_problem(no_email.find(), 401, "Unauthorized")


# --- limits and validation ----------------------------------------------------------------------------------

def test_refused_once_an_owner_has_more_than_100_subscriptions(dss: DSSServer, client: Client) -> None:
    # the original's check is `count > SUBSCRIPTION_LIMIT` (100): the 101st is accepted, the 102nd refused
    created = [client.put({"callback_url": HOOK}) for _ in range(101)]
    assert [r.status_code for r in created] == [201] * 101
    assert_problem(client.put({"callback_url": HOOK}), 406, "not_acceptable")
    assert len(client.find().json()["subscriptions"]) == 101
    assert Client(dss, OTHER).put({"callback_url": HOOK}).status_code == 201  # per owner
    assert client.delete(created[0].json()["uuid"]).status_code == 200
    assert client.put({"callback_url": HOOK}).status_code == 201


@pytest.mark.parametrize("body, code", [
    ({"callback_url": HOOK, "jmespath_query": "files.[?"}, "invalid_jmespath"),
    ({"callback_url": HOOK, "attachments": {"_mine": {"type": "jmespath", "expression": "uuid"}}},
     "invalid_attachment_name"),
    ({"callback_url": HOOK, "attachments": {"a": {"type": "jmespath", "expression": "a[?"}}},
     "invalid_attachment_expression"),
    ({"callback_url": HOOK, "es_query": {"query": {"no_such_query": {}}}}, "elasticsearch_bad_request"),
    ({"callback_url": HOOK, "es_query": {"not_a_query": {}}}, "elasticsearch_bad_request"),
    ({"jmespath_query": "uuid"}, "illegal_arguments"),  # no callback_url
    ({"callback_url": "ftp://127.0.0.1/x"}, "illegal_arguments"),
    ({"callback_url": HOOK, "unexpected": 1}, "illegal_arguments"),
    ({"callback_url": HOOK, "method": "GET"}, "illegal_arguments"),
    ({"callback_url": HOOK, "hmac_key_id": 'has"quote'}, "illegal_arguments"),
    ({"callback_url": HOOK, "attachments": {"a": {"type": "python", "expression": "x"}}}, "illegal_arguments"),
])
def test_invalid_subscriptions_are_400(client: Client, body: dict[str, Any], code: str) -> None:
    assert_problem(client.put(body), 400, code)
    assert client.find().json() == client.find("elasticsearch").json() == {"subscriptions": []}


def test_callback_urls_on_private_networks_need_the_allow_list(tmp_path: Path, staging: Path,
                                                               client: Client) -> None:
    assert client.put({"callback_url": "http://127.0.0.1:8080/x"}).status_code == 201  # allow-listed here
    strict = start_server(base_env(tmp_path / "strict-data", staging))  # no DSS_CALLBACK_ALLOWLIST
    try:
        strict_client = Client(strict)
        for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://10.0.0.1/x", "http://[::1]:80/x",
                    "http://169.254.169.254/latest/meta-data"):
            assert_problem(strict_client.put({"callback_url": url}), 400, "illegal_arguments")
        assert strict_client.find().json() == {"subscriptions": []}
    finally:
        strict.stop()


# --- the secret is write-only ----------------------------------------------------------------------------------

def test_the_secret_is_never_shown_or_logged(dss: DSSServer, client: Client, receiver: Receiver,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    created = client.put({"callback_url": receiver.url(), "hmac_secret_key": SECRET})
    es = client.put({"callback_url": receiver.url(), "es_query": ES_QUERY, "hmac_secret_key": SECRET})
    bodies += [created.text, es.text]
    sub_id = created.json()["uuid"]
    document = {"uuid": "b", "state": "new", "files": {}}
    assert dss.runtime.notifier.notify("aws", "b", "2024-01-01T000000.000000Z", "CREATE", document) == 1
    receiver.wait_for(1, timeout=60)
    for response in (client.get(sub_id), client.find(), client.get(es.json()["uuid"], "elasticsearch"),
                     client.find("elasticsearch"), client.deliveries(sub_id), client.delete(sub_id)):
        assert response.status_code == 200
        bodies.append(response.text)
    assert all(SECRET not in text for text in bodies)
    assert SECRET not in caplog.text
    assert "Authorization" in receiver.requests[0].headers  # yet it was used: the request is signed


# --- the delivery log ------------------------------------------------------------------------------------------

@DELIVERY_STORES
def test_deliveries_of_a_subscription(dss: DSSServer, client: Client, receiver: Receiver,
                                     delivery_store: str) -> None:
    from dss.notify import DeliveryStore

    assert isinstance(dss.runtime.deliveries, DeliveryStore) == (delivery_store == "sqlite")
    sub_id = client.put({"callback_url": receiver.url(), "jmespath_query": "state == 'new'"}).json()["uuid"]
    assert client.deliveries(sub_id).json() == {"deliveries": []}
    receiver.fail(1)  # the second notification needs a retry
    for version in ("2024-01-01T000000.000000Z", "2024-01-02T000000.000000Z"):
        dss.runtime.notifier.notify("aws", "b", version, "CREATE", {"state": "new"})
    dss.runtime.notifier.notify("aws", "b", "2024-01-03T000000.000000Z", "CREATE", {"state": "old"})  # no match
    receiver.wait_for(3, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = client.deliveries(sub_id).json()["deliveries"]
        if [d["state"] for d in listed] == ["delivered", "delivered"]:
            break
        time.sleep(0.1)
    assert len(listed) == 2
    assert sorted(d["event_id"] for d in listed) == ["b.2024-01-01T000000.000000Z:CREATE",
                                                     "b.2024-01-02T000000.000000Z:CREATE"]
    assert sorted(len(d["attempts"]) for d in listed) == [1, 2]
    assert all(d["subscription_id"] == sub_id and d["callback_url"] == receiver.url() for d in listed)
    assert len(client.deliveries(sub_id, per_page=1).json()["deliveries"]) == 1
    assert client.deliveries(sub_id, state="dead").json() == {"deliveries": []}
    assert len(client.deliveries(sub_id, state="delivered").json()["deliveries"]) == 2
    assert_problem(client.deliveries(sub_id, state="bogus"), 400, "illegal_arguments")
    assert_problem(client.deliveries(str(uuid.uuid4())), 404, "not_found")
    payloads = [json.loads(r.body) for r in receiver.requests]
    assert {p["subscription_id"] for p in payloads} == {sub_id}


@pytest.fixture
def many_receivers() -> Iterator[list[Receiver]]:
    from tests.infra.receivers import Receiver

    receivers = [Receiver().start() for _ in range(2)]
    yield receivers
    for r in receivers:
        r.stop()


@DELIVERY_STORES
def test_deleting_a_subscription_cancels_its_pending_deliveries(dss: DSSServer, client: Client,
                                                                many_receivers: list[Receiver]) -> None:
    failing, healthy = many_receivers
    failing.fail(100)
    doomed = client.put({"callback_url": failing.url()}).json()["uuid"]
    kept = client.put({"callback_url": healthy.url()}).json()["uuid"]
    dss.runtime.notifier.notify("aws", "b", "2024-01-01T000000.000000Z", "CREATE", {})
    failing.wait_for(1, timeout=60)
    healthy.wait_for(1, timeout=60)
    logged = client.deliveries(doomed).json()["deliveries"]
    assert client.delete(doomed).status_code == 200
    assert logged and logged[0]["state"] == "pending"
    (cancelled,) = dss.runtime.deliveries.deliveries(doomed)
    assert (cancelled.state, cancelled.last_error) == ("dead", "subscription deleted")
    # The receiver answered before the worker recorded its answer: wait for the record, not the request.
    poll_until(lambda: client.deliveries(kept).json()["deliveries"][0]["state"] == "delivered",
               "the healthy subscription's delivery to be recorded")
