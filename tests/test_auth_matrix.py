"""Every write operation (and every operation that needs a token) against every kind of token.

One server for the module; each case makes its own target (a file, bundle or subscription) owned by the
identity the case names, then calls the operation with the case's token. The expected statuses are the
contract's §0.3 rules plus ours: bundle writes need group `hca` like file writes, and new versions of a
file or bundle UUID may only be written by its owner or an administrator.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.config import EMAIL_CLAIM, GROUP_CLAIM, HCA_AUDIENCE
from dss.identifiers import new_version
from tests.infra.dss_server import ADMIN, USER, base_env, start_server
from tests.infra.helpers import new_uuid, stage_local

OTHER = "other@example.org"
CALLBACK = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-matrix")
    (root / "staging").mkdir()
    dss = start_server(base_env(root / "data", root / "staging", DSS_CALLBACK_ALLOWLIST="127.0.0.1/32"))
    yield dss
    dss.stop()


# --- tokens ---------------------------------------------------------------------------------------------
def _signed(dss, key=None, kid=None, **overrides) -> dict[str, str]:
    local_kid, local_key = dss.runtime.keys.local_signing_key()
    now = time.time()
    claims = {"iss": dss.config.local_issuer, "sub": USER, "aud": HCA_AUDIENCE, "iat": now, "exp": now + 600,
              "email": USER, EMAIL_CLAIM: USER, GROUP_CLAIM: ["hca"], **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    token = jwt.encode(claims, key or local_key, "RS256", headers={"kid": kid or local_kid})
    return {"Authorization": f"Bearer {token}"}


_STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# kind → (headers for the call, identity that owns the target)
TOKENS: dict[str, Callable] = {
    "none": lambda dss: ({}, USER),
    "malformed": lambda dss: ({"Authorization": "Bearer not.a.jwt"}, USER),
    "unknown_key": lambda dss: (_signed(dss, key=_STRANGER_KEY, kid="unknown"), USER),
    "expired": lambda dss: (_signed(dss, exp=time.time() - 3600, iat=time.time() - 7200), USER),
    "wrong_audience": lambda dss: (_signed(dss, aud="https://elsewhere.example.org/"), USER),
    "wrong_group": lambda dss: (dss.auth(USER, ("other-lab",)), USER),
    "public_group": lambda dss: (dss.auth(USER, ("public",)), USER),
    "no_group": lambda dss: (_signed(dss, **{GROUP_CLAIM: None}), USER),
    "non_admin": lambda dss: (dss.auth(USER), USER),
    "admin": lambda dss: (dss.auth(ADMIN), ADMIN),
    "admin_on_other": lambda dss: (dss.auth(ADMIN), USER),
    "other_owner": lambda dss: (dss.auth(OTHER), USER),
}


# --- operations -----------------------------------------------------------------------------------------
def _file(dss, owner: str) -> dict:
    uuid, version = new_uuid(), new_version()
    response = requests.put(f"{dss.url}/v1/files/{uuid}", params={"version": version}, headers=dss.auth(owner),
                            json={"source_url": stage_local(dss.staging, uuid.encode()), "creator_uid": 1})
    assert response.status_code == 201, response.text
    return {"uuid": uuid, "version": version, "name": f"{uuid}.bin", "indexed": False}


def _bundle(dss, owner: str) -> dict:
    entry, uuid, version = _file(dss, owner), new_uuid(), new_version()
    response = requests.put(f"{dss.url}/v1/bundles/{uuid}", params={"version": version, "replica": "aws"},
                            headers=dss.auth(owner), json={"files": [entry], "creator_uid": 1})
    assert response.status_code == 201, response.text
    return {"uuid": uuid, "version": version, "file": entry}


def _subscription(dss, owner: str) -> dict:
    response = requests.put(f"{dss.url}/v1/subscriptions", params={"replica": "aws"}, headers=dss.auth(owner),
                            json={"callback_url": CALLBACK})
    assert response.status_code == 201, response.text
    return response.json()


def _put_file(dss, target, headers):
    return requests.put(f"{dss.url}/v1/files/{target['uuid']}", params={"version": new_version()}, headers=headers,
                        json={"source_url": stage_local(dss.staging, b"new version"), "creator_uid": 1})


def _put_bundle(dss, target, headers):
    return requests.put(f"{dss.url}/v1/bundles/{target['uuid']}", params={"version": new_version(),
                        "replica": "aws"}, headers=headers, json={"files": [target["file"]], "creator_uid": 1})


def _patch_bundle(dss, target, headers):
    return requests.patch(f"{dss.url}/v1/bundles/{target['uuid']}", params={"version": target["version"],
                          "replica": "aws"}, headers=headers, json={"remove_files": [target["file"]]})


def _delete_bundle(dss, target, headers):
    return requests.delete(f"{dss.url}/v1/bundles/{target['uuid']}", params={"replica": "aws"}, headers=headers,
                           json={"reason": "matrix"})


def _put_subscription(dss, target, headers):
    return requests.put(f"{dss.url}/v1/subscriptions", params={"replica": "aws"}, headers=headers,
                        json={"callback_url": CALLBACK})


def _find_subscriptions(dss, target, headers):
    return requests.get(f"{dss.url}/v1/subscriptions", params={"replica": "aws"}, headers=headers)


def _get_subscription(dss, target, headers):
    return requests.get(f"{dss.url}/v1/subscriptions/{target['uuid']}", params={"replica": "aws"}, headers=headers)


def _delete_subscription(dss, target, headers):
    return requests.delete(f"{dss.url}/v1/subscriptions/{target['uuid']}", params={"replica": "aws"},
                           headers=headers)


def _deliveries(dss, target, headers):
    return requests.get(f"{dss.url}/v1/subscriptions/{target['uuid']}/deliveries", params={"replica": "aws"},
                        headers=headers)


@dataclass(frozen=True)
class Operation:
    call: Callable
    target: Callable | None
    ok: int
    owned: bool  # another owner's target is refused (403 for files and bundles, 404 for subscriptions)
    groups: frozenset[str] = frozenset({"hca"})
    admin_only: bool = False


OPERATIONS = {
    "PUT /files": Operation(_put_file, _file, 201, owned=True),
    "PUT /bundles": Operation(_put_bundle, _bundle, 201, owned=True),
    "PATCH /bundles": Operation(_patch_bundle, _bundle, 200, owned=True),
    "DELETE /bundles": Operation(_delete_bundle, _bundle, 200, owned=False, groups=frozenset(), admin_only=True),
    "PUT /subscriptions": Operation(_put_subscription, None, 201, owned=False, groups=frozenset({"hca", "public"})),
    "GET /subscriptions": Operation(_find_subscriptions, _subscription, 200, owned=False,
                                    groups=frozenset({"hca", "public"})),
    "GET /subscriptions/{uuid}": Operation(_get_subscription, _subscription, 200, owned=True,
                                           groups=frozenset({"hca", "public"})),
    "DELETE /subscriptions/{uuid}": Operation(_delete_subscription, _subscription, 200, owned=True,
                                              groups=frozenset({"hca", "public"})),
    "GET /subscriptions/{uuid}/deliveries": Operation(_deliveries, _subscription, 200, owned=True,
                                                      groups=frozenset({"hca", "public"})),
}


def expected(name: str, operation: Operation, kind: str) -> int:
    if kind in ("none", "malformed", "unknown_key", "expired", "wrong_audience"):
        return 401
    if operation.admin_only:
        return operation.ok if kind in ("admin", "admin_on_other") else 403
    group = {"wrong_group": "other-lab", "public_group": "public", "no_group": None}.get(kind, "hca")
    if group not in operation.groups:
        return 403
    another = kind in ("other_owner", "admin_on_other")
    if another and operation.owned:
        if name.startswith(("PUT /files", "PUT /bundles", "PATCH /bundles")):
            return operation.ok if kind == "admin_on_other" else 403
        return 404  # subscriptions are private to their owner, administrators included
    return operation.ok


@pytest.mark.parametrize("kind", list(TOKENS))
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_authorisation_matrix(server, name, kind):
    operation = OPERATIONS[name]
    headers, owner = TOKENS[kind](server)
    target = operation.target(server, owner) if operation.target else None
    response = operation.call(server, target, headers)
    status = expected(name, operation, kind)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(
        "application/problem+json" if status >= 400 else "application/json")
    if status >= 400:
        assert response.json()["code"] in ("OAuthProblem", "Unauthorized", "Forbidden", "not_found")
    if name == "GET /subscriptions" and status == 200:
        listed = {s["uuid"] for s in response.json()["subscriptions"]}
        assert (target["uuid"] in listed) == (kind in ("non_admin", "public_group", "admin"))
