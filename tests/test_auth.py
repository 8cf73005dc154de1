"""Authentication and authorisation through the real API: issuers, token problems, groups, admins."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.config import EMAIL_CLAIM, GROUP_CLAIM, HCA_AUDIENCE
from tests.infra.dss_server import REPO, start_server
from tests.infra.helpers import new_uuid, put_file, stage_local


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _claims(issuer: str, email: str = "someone@example.org", group: str = "hca", **extra) -> dict:
    now = time.time()
    return {"iss": issuer, "sub": email, "aud": HCA_AUDIENCE, "iat": now, "exp": now + 600, "email": email,
            GROUP_CLAIM: group, EMAIL_CLAIM: email, **extra}


def _put(dss, headers: dict) -> requests.Response:
    return requests.put(f"{dss.url}/v1/files/{new_uuid()}", params={"version": "2020-01-01T000000.000000Z"},
                        headers=headers, json={"source_url": stage_local(dss.staging, b"auth"), "creator_uid": 1})


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_token_problems_have_the_contract_codes(dss):
    local_key = dss.runtime.keys.local_signing_key()
    expired = jwt.encode(_claims(dss.config.local_issuer, exp=time.time() - 3600), local_key[1], "RS256",
                         headers={"kid": local_key[0]})
    wrong_audience = jwt.encode(_claims(dss.config.local_issuer, aud="https://elsewhere/"), local_key[1], "RS256")
    forged = jwt.encode(_claims(dss.config.local_issuer), _key(), "RS256", headers={"kid": local_key[0]})
    untrusted = jwt.encode(_claims("https://evil.example.org/"), _key(), "RS256")
    cases = [
        ({}, 401, "OAuthProblem", "No authorization token provided"),
        ({"Authorization": "Bearer"}, 401, "OAuthProblem", "Invalid authorization header"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "OAuthProblem", "Invalid authorization header"),
        (_bearer("not-a-jwt"), 401, "Unauthorized", "Failed to decode token."),
        (_bearer(expired), 401, "Unauthorized", "Authorization token is invalid"),
        (_bearer(wrong_audience), 401, "Unauthorized", "Authorization token is invalid"),
        (_bearer(forged), 401, "Unauthorized", "Authorization token is invalid"),
        (_bearer(untrusted), 403, "Forbidden", "User is not authorized to access this resource"),
    ]
    for headers, status, code, title in cases:
        response = _put(dss, headers)
        assert (response.status_code, response.json()["code"], response.json()["title"]) == (status, code, title)


def test_token_is_checked_before_parameters(dss):
    response = requests.put(f"{dss.url}/v1/files/not-a-uuid", params={"version": "bad"}, json={"junk": 1})
    assert response.status_code == 401


def test_group_rules(dss):
    assert _put(dss, dss.auth(groups=("public",))).status_code == 403
    assert _put(dss, dss.auth(groups=())).status_code == 403
    assert _put(dss, dss.auth(groups=("hca",))).status_code == 201
    # Unlike the original, PUT /bundles needs group hca too (tests/test_auth_matrix.py has every case)
    for groups, status in (((), 403), (("public",), 403), (("hca",), 201)):
        response = requests.put(f"{dss.url}/v1/bundles/{new_uuid()}",
                                params={"version": "2020-01-01T000000.000000Z", "replica": "aws"},
                                headers=dss.auth(groups=groups), json={"files": [], "creator_uid": 1})
        assert response.status_code == status


def test_float_iat_and_exp_are_accepted(dss):
    kid, key = dss.runtime.keys.local_signing_key()
    claims = _claims(dss.config.local_issuer)
    assert isinstance(claims["iat"], float)
    assert _put(dss, _bearer(jwt.encode(claims, key, "RS256", headers={"kid": kid}))).status_code == 201


def test_self_signed_service_account_tokens_once_trusted(dss, tmp_path):
    """What the hca client sends with GOOGLE_APPLICATION_CREDENTIALS: a JWT it signs itself."""
    key = _key()
    email = "uploader@my-project.iam.gserviceaccount.com"
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"type": "service_account", "client_email": email, "private_key_id": "k1",
                                    "private_key": _pem(key)}))
    token = jwt.encode(_claims(email, email=email, sub=email, scope=["email", "openid"]), key, "RS256",
                       headers={"kid": "k1"})
    assert _put(dss, _bearer(token)).status_code == 403  # not trusted yet

    result = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "trust-service-account",
                             "--key-file", str(key_file)], env={"DSS_DATA_DIR": str(dss.config.data_dir), "PATH": ""},
                            capture_output=True, text=True, check=True)
    assert email in result.stdout and "PRIVATE" not in result.stdout + result.stderr
    assert _put(dss, _bearer(token)).status_code == 201
    other = jwt.encode(_claims(email, email=email, sub=email), _key(), "RS256", headers={"kid": "k1"})
    assert _put(dss, _bearer(other)).status_code == 401


@pytest.fixture
def oidc_provider():
    """A real OpenID provider on loopback: discovery document and JWKS."""
    key = _key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="oidc-1", use="sig", alg="RS256")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            documents = {"/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": issuer + "jwks"},
                         "/jwks": {"keys": [jwk]}}
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer = f"http://127.0.0.1:{server.server_port}/"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield issuer, key
    server.shutdown()


def test_openid_provider_tokens(dss_env, oidc_provider):
    issuer, key = oidc_provider
    server = start_server({**dss_env, "DSS_OPENID_PROVIDERS": issuer})
    try:
        token = jwt.encode(_claims(issuer), key, "RS256", headers={"kid": "oidc-1"})
        assert _put(server, _bearer(token)).status_code == 201
        bad_kid = jwt.encode(_claims(issuer), _key(), "RS256", headers={"kid": "unknown"})
        assert _put(server, _bearer(bad_kid)).status_code == 401
    finally:
        server.stop()


def test_no_token_or_key_in_logs_or_responses(dss, caplog):
    caplog.set_level(logging.DEBUG)
    token = dss.token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    responses = [_put(dss, _bearer(forged)), _put(dss, _bearer(token))]
    signature = token.rsplit(".", 1)[1]
    for text in [r.text for r in responses] + [caplog.text]:
        assert signature not in text and forged.rsplit(".", 1)[1] not in text
        assert "PRIVATE KEY" not in text
    key_file = dss.config.data_dir / "auth" / "local-issuer.pem"
    assert key_file.stat().st_mode & 0o077 == 0


def test_admin_rules_for_delete(dss):
    response = requests.delete(f"{dss.url}/v1/bundles/{new_uuid()}", params={"replica": "aws"},
                               headers=dss.auth("not-admin@example.org"), json={"reason": "x"})
    assert response.status_code == 403
    assert response.json()["title"] == "You can't delete bundles with these credentials!"
    no_email = requests.put(f"{dss.url}/v1/files/{new_uuid()}", params={"version": "2020-01-01T000000.000000Z"},
                            headers=dss.auth(), json={"source_url": stage_local(dss.staging, b"x"), "creator_uid": 1})
    assert no_email.status_code == 201
    assert put_file(dss, stage_local(dss.staging, b"y")).status_code == 201
