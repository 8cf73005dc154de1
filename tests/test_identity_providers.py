"""Several identity providers at once (DSS_IDENTITY_PROVIDERS): each token is read with the audience, group
claim and e-mail claim of the provider that lists its audience; the single-issuer settings stay the default."""
from __future__ import annotations

import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.config import EMAIL_CLAIM, GROUP_CLAIM, HCA_AUDIENCE, Config, ConfigError, IdentityProvider
from tests.infra.dss_server import start_server

DBIO = "https://auth.ucsc.ucsc-cgp-redwood.org"
DBIO_PROVIDER = {"audience": DBIO, "group_claim": f"{DBIO}/group", "email_claim": f"{DBIO}/email"}


def test_the_default_provider_comes_first_and_others_follow(tmp_path):
    config = Config.from_env({"DSS_DATA_DIR": str(tmp_path), "DSS_IDENTITY_PROVIDERS": json.dumps([
        DBIO_PROVIDER, {"audience": ["a", "b"], "issuer": "https://idp.example.org/"}])})
    assert config.identity_providers() == (
        IdentityProvider((HCA_AUDIENCE,), GROUP_CLAIM, EMAIL_CLAIM),
        IdentityProvider((DBIO,), f"{DBIO}/group", f"{DBIO}/email"),
        IdentityProvider(("a", "b"), GROUP_CLAIM, EMAIL_CLAIM, "https://idp.example.org/"))
    assert Config.from_env({"DSS_DATA_DIR": str(tmp_path)}).identity_providers() == (
        IdentityProvider((HCA_AUDIENCE,), GROUP_CLAIM, EMAIL_CLAIM),)


@pytest.mark.parametrize("raw", ['{"audience": "x"}', "[1]", '[{"group_claim": "g"}]', '[{"audience": []}]',
                                 '[{"audience": "x", "scopes": []}]', "not json"])
def test_malformed_providers_stop_start_up(tmp_path, raw):
    with pytest.raises(ConfigError, match="DSS_IDENTITY_PROVIDERS"):
        Config.from_env({"DSS_DATA_DIR": str(tmp_path), "DSS_IDENTITY_PROVIDERS": raw})


def _account_token(key: rsa.RSAPrivateKey, email: str, audience: str, group_claim: str, email_claim: str) -> str:
    now = time.time()
    claims = {"iss": email, "sub": email, "aud": audience, "iat": now, "exp": now + 600, "email": email,
              group_claim: "hca", email_claim: email}
    return jwt.encode(claims, key, "RS256", headers={"kid": "k1"})


def test_hca_and_dbio_tokens_against_one_server(dss_env):
    dss_env["DSS_IDENTITY_PROVIDERS"] = json.dumps([DBIO_PROVIDER])
    server = start_server(dss_env)
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        for email in ("hca@sa.example.org", "dbio@sa.example.org"):
            server.runtime.keys.trust_service_account({"client_email": email, "private_key_id": "k1",
                                                       "private_key": pem})
        tokens = {
            "hca@sa.example.org": _account_token(key, "hca@sa.example.org", HCA_AUDIENCE, GROUP_CLAIM, EMAIL_CLAIM),
            "dbio@sa.example.org": _account_token(key, "dbio@sa.example.org", DBIO, f"{DBIO}/group",
                                                  f"{DBIO}/email"),
        }
        for email, token in tokens.items():
            listed = requests.get(f"{server.url}/v1/subscriptions", params={"replica": "aws"},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert listed.status_code == 200, (email, listed.text)
        # a dbio-shaped token whose group sits in hca's claim is read with dbio's claims: no group, 403
        crossed = _account_token(key, "dbio@sa.example.org", DBIO, GROUP_CLAIM, f"{DBIO}/email")
        crossed_claims = jwt.decode(crossed, options={"verify_signature": False})
        del crossed_claims["email"]
        assert requests.get(f"{server.url}/v1/subscriptions", params={"replica": "aws"}, timeout=30, headers={
            "Authorization": f"Bearer {jwt.encode(crossed_claims, key, 'RS256', headers={'kid': 'k1'})}"},
        ).status_code == 403
        # an audience no provider lists is refused as before
        stranger = _account_token(key, "hca@sa.example.org", "https://elsewhere/", GROUP_CLAIM, EMAIL_CLAIM)
        refused = requests.get(f"{server.url}/v1/subscriptions", params={"replica": "aws"}, timeout=30,
                               headers={"Authorization": f"Bearer {stranger}"})
        assert refused.status_code == 401 and refused.json()["code"] == "Unauthorized"
        odd_claims = jwt.decode(stranger, options={"verify_signature": False}) | {"aud": [{"not": "a string"}, 7]}
        odd = requests.get(f"{server.url}/v1/subscriptions", params={"replica": "aws"}, timeout=30, headers={
            "Authorization": f"Bearer {jwt.encode(odd_claims, key, 'RS256', headers={'kid': 'k1'})}"})
        assert odd.status_code == 401, odd.text
    finally:
        server.stop()
