"""Secrets at the configuration edge (dss.secrets): the data directory by default, AWS Secrets Manager (a
moto server here) with `DSS_SECRETS_URL`; read once per process; never created by a cloud server.

The operator commands run in this process (tests/ops_support.py), with the environment a shell gives them.
"""
from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest

from dss.auth import KeyStore, mint_token, new_service_account_key
from dss.config import Config, ConfigError
from dss.errors import Unauthorized
from dss.runtime import Runtime
from dss.secrets import (
    GCP_CREDENTIALS,
    SECRET_NAMES,
    LocalSecretStore,
    MissingSecret,
    SecretsManagerStore,
    ServerSecrets,
    secret_prefix,
)
from dss.storage.blobstore.gs import GSBlobStore
from tests.ops_support import OpsRunner, ops_runner


@pytest.fixture
def dss_ops(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> OpsRunner:
    return ops_runner(monkeypatch, capsys)


def _cloud_env(tmp_path: Path) -> dict[str, str]:
    stage = f"t{uuid.uuid4().hex[:10]}"
    return {"DSS_DATA_DIR": str(tmp_path / "data"), "DSS_DEPLOYMENT_STAGE": stage,
            "DSS_SECRETS_URL": "secretsmanager://", "DSS_WORKERS": "0"}


def _counted(store: SecretsManagerStore) -> list[str]:
    """The Secrets Manager reads `store` makes from now on, as the SDK sends them."""
    calls: list[str] = []
    store.client.meta.events.register("before-parameter-build.secrets-manager.GetSecretValue",
                                      lambda params, **_: calls.append(params["SecretId"]))
    return calls


def test_the_secrets_url_is_checked_and_names_the_prefix(tmp_path):
    assert Config.from_env({}, cwd=tmp_path).secrets_url == ""
    assert secret_prefix("secretsmanager://", "dev") == "dss/dev/"
    assert secret_prefix("secretsmanager://dss/prod", "dev") == "dss/prod/"
    assert secret_prefix("secretsmanager://team/dss/dev/", "x") == "team/dss/dev/"
    for bad in ("s3://bucket", "secretsmanager://dss/dev/?x=1", "file:///tmp"):
        with pytest.raises(ConfigError):
            Config.from_env({"DSS_SECRETS_URL": bad}, cwd=tmp_path)


def test_the_local_store_keeps_its_files_private_and_earlier_names(tmp_path):
    directory = tmp_path / "auth"
    directory.mkdir()
    (directory / "url-signing.key").write_text("ab" * 32)  # a data directory of an earlier release
    store = LocalSecretStore(directory)
    assert store.require("url-signing-key") == "ab" * 32
    assert store.get("admin-emails") is None
    issuer = store.require("token-issuer-key")  # created on first use, once
    assert issuer.startswith("-----BEGIN PRIVATE KEY-----") and store.require("token-issuer-key") == issuer
    assert store.put_new("token-issuer-key", "another") == issuer  # the first creator wins
    assert stat.S_IMODE((directory / "local-issuer.pem").stat().st_mode) == 0o600
    store.put("admin-emails", "Boss@Example.org\nother@example.org")
    assert store.names() == ["admin-emails", "token-issuer-key", "url-signing-key"]
    config = Config.from_env({"DSS_DATA_DIR": str(tmp_path), "DSS_ADMIN_EMAILS": "a@example.org"}, cwd=tmp_path)
    secrets = ServerSecrets.load(config)
    assert secrets.url_signing_key == bytes.fromhex("ab" * 32)
    assert secrets.configure(config).admin_emails == ("a@example.org", "boss@example.org", "other@example.org")


def test_the_secrets_manager_store(aws_env):
    prefix = f"dss/t{uuid.uuid4().hex[:10]}/"
    store = SecretsManagerStore.open(prefix)
    assert store.get("url-signing-key") is None and store.names() == []
    store.put("admin-emails", '["a@example.org"]')
    store.put("admin-emails", '["b@example.org"]')  # a second put is a new version
    store.client.create_secret(Name=prefix + "application-secrets.json")  # made by Terraform, not set yet
    SecretsManagerStore.open(f"{prefix}other/").put("elsewhere", "x")
    fresh = SecretsManagerStore.open(prefix)
    calls = _counted(fresh)
    assert fresh.get("admin-emails") == '["b@example.org"]' and fresh.get("admin-emails") == '["b@example.org"]'
    assert fresh.get("application-secrets.json") is None and fresh.get("application-secrets.json") is None
    assert calls == [prefix + "admin-emails", prefix + "application-secrets.json"]  # each read once
    assert fresh.names() == ["admin-emails"]  # not the one with no value, nor another prefix's


def test_a_cloud_server_needs_its_keys_and_reads_every_secret_once(aws_env, tmp_path, dss_ops):
    env = _cloud_env(tmp_path)
    config = Config.from_env(env)
    prefix = f"dss/{env['DSS_DEPLOYMENT_STAGE']}/"
    manager = SecretsManagerStore.open(prefix).client
    for name in SECRET_NAMES:  # as Terraform leaves them: made, with no value yet
        manager.create_secret(Name=prefix + name)
    with pytest.raises(MissingSecret, match="url-signing-key.*dss-ops.py secrets set"):
        Runtime(config)
    assert all(SecretsManagerStore.open(prefix).get(name) is None for name in SECRET_NAMES)  # none made

    code, _, err = dss_ops("secrets", "init", **env)
    assert code == 0 and "url-signing-key, token-issuer-key" in err
    for name, value in (("admin-emails", "ops@example.org"),
                        ("application-secrets.json", '{"installed": {"client_id": "cloud-client"}}')):
        assert dss_ops("secrets", "set", name, stdin=value, **env)[0] == 0
    key_file = tmp_path / "sa.json"
    assert dss_ops("service-account", "--email", "robot@example.org", "--key-file", str(key_file), **env)[0] == 0
    code, token, _ = dss_ops("token", "--email", "ops@example.org", **env)
    assert code == 0

    store = SecretsManagerStore.open(prefix)
    calls = _counted(store)
    runtime = Runtime(config, ServerSecrets.load(config, store))  # the cold start
    try:
        assert sorted(calls) == sorted(prefix + name for name in SECRET_NAMES)
        assert runtime.authenticator.verify(token.strip()).email == "ops@example.org"
        account = json.loads(key_file.read_text())
        robot = mint_token(runtime.config, KeyStore(LocalSecretStore(tmp_path / "robot")), "x", [])  # untrusted
        with pytest.raises(Unauthorized):  # the local issuer, signed with another key
            runtime.authenticator.verify(robot)
        import jwt

        self_signed = jwt.encode({"iss": account["client_email"], "sub": account["client_email"],
                                  "aud": runtime.config.audiences[0], "exp": 2 ** 31 - 1},
                                 account["private_key"], algorithm="RS256", headers={"kid": account["private_key_id"]})
        assert runtime.authenticator.verify(self_signed).subject == "robot@example.org"
        assert "ops@example.org" in runtime.config.admin_emails
        assert runtime.application_secrets("https://x")["installed"]["client_id"] == "cloud-client"
        assert len(calls) == len(SECRET_NAMES)  # requests read nothing more
    finally:
        runtime.close()


def test_secrets_commands_print_a_value_only_when_asked_by_name(aws_env, tmp_path, dss_ops):
    env = _cloud_env(tmp_path)
    value_file = tmp_path / "value"
    value_file.write_text("top-secret-value")
    assert dss_ops("secrets", "set", "application-secrets.json", "--file", str(value_file), **env)[0] == 0
    code, out, err = dss_ops("secrets", "list", **env)
    assert code == 0 and out.split() == ["application-secrets.json"] and "top-secret" not in out + err
    assert dss_ops("secrets", "get", "application-secrets.json", **env)[1] == "top-secret-value\n"
    code, _, err = dss_ops("secrets", "get", "admin-emails", **env)
    assert code == 1 and "not set" in err
    code, _, err = dss_ops("token", "--email", "x@example.org", **env)  # no issuer key in the stage yet
    assert code == 1 and "token-issuer-key" in err
    code, _, err = dss_ops("secrets", "set", "../escape", stdin="x", **env)
    assert code == 1 and "not a secret name" in err


def test_the_gcs_stores_sign_in_with_the_credentials_secret(tmp_path):
    key = {**new_service_account_key("reader@dss-test.iam.gserviceaccount.com"), "project_id": "dss-test",
           "token_uri": "https://oauth2.googleapis.com/token"}
    store = LocalSecretStore(tmp_path / "auth")
    store.put(GCP_CREDENTIALS, json.dumps(key))
    options = ServerSecrets.load(Config.from_env({"DSS_DATA_DIR": str(tmp_path)}, cwd=tmp_path)).store_options()
    client = GSBlobStore.make_client(options)  # no network: credentials are only loaded here
    assert client._credentials.service_account_email == "reader@dss-test.iam.gserviceaccount.com"
    assert client.project == "dss-test"
