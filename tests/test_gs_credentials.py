"""GCS credentials are the configured ones or none: never Application Default Credentials' probe of the
Compute Engine metadata server (169.254.169.254), which held a request for ~100 s off Google Cloud."""
from __future__ import annotations

import ipaddress
import json
import socket
import time

import google.auth
import google.auth.credentials
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import service_account

from dss.config import Config
from dss.runtime import Runtime
from dss.storage.blobstore import BlobAccessDenied
from dss.storage.blobstore.gs import GSBlobStore
from tests.infra.dss_server import base_env
from tests.infra.helpers import put_file

# Seconds, generous for a busy machine (it covers building a Runtime): the failure is immediate, and the metadata
# probe is caught by `network` (refused at once and recorded); this only keeps a regression from hanging the suite.
HANG_GUARD = 60.0


class Network:
    """Records every attempt to connect anywhere but loopback, and refuses it at once."""

    def __init__(self) -> None:
        self.attempts: list[object] = []
        self.default_calls = 0

    def __repr__(self) -> str:
        return f"Network(attempts={self.attempts}, google.auth.default() calls={self.default_calls})"


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Network:
    seen = Network()
    # No gcloud application-default file from the developer's machine.
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))

    def guard(address: object) -> None:
        if not isinstance(address, tuple):
            return  # a Unix socket
        host = str(address[0])
        if host == "localhost" or _loopback(host):
            return
        seen.attempts.append(address)
        raise OSError(f"test: no connection to {host}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_create, real_default = socket.create_connection, google.auth.default

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    def create_connection(address, *args, **kwargs):
        guard(address)
        return real_create(address, *args, **kwargs)

    def default(*args, **kwargs):
        seen.default_calls += 1
        return real_default(*args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(google.auth, "default", default)
    return seen


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_gs_source_without_credentials_fails_at_once_with_no_metadata_probe(dss, network):
    started = time.monotonic()
    response = put_file(dss, "gs://some-staging-bucket/data.bin")
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD, network
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "illegal_source_url"
    assert "no Google Cloud credentials" in response.json()["title"]
    assert network.attempts == []  # 169.254.169.254 above all
    assert network.default_calls == 0


def test_gs_replica_without_credentials_stops_the_server_from_starting(tmp_path, network):
    env = base_env(tmp_path / "data", tmp_path, DSS_GCP_REPLICA_URL="gs://some-replica-bucket", DSS_WORKERS="0")
    started = time.monotonic()
    with pytest.raises(BlobAccessDenied, match="no Google Cloud credentials"):
        Runtime(Config.from_env(env))
    assert time.monotonic() - started < HANG_GUARD
    assert network.attempts == [] and network.default_calls == 0


@pytest.mark.parametrize("with_key_file", [False, True])
def test_emulator_keeps_anonymous_credentials(monkeypatch, network, tmp_path, with_key_file):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    if with_key_file:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(_key_file(tmp_path)))
    client = GSBlobStore.make_client({})
    assert isinstance(client._credentials, google.auth.credentials.AnonymousCredentials)
    assert network.attempts == [] and network.default_calls == 0


@pytest.mark.parametrize("where", ["GOOGLE_APPLICATION_CREDENTIALS", "gcloud application-default file"])
def test_configured_key_file_is_used(monkeypatch, network, tmp_path, where):
    key = _key_file(tmp_path)
    if where == "GOOGLE_APPLICATION_CREDENTIALS":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    else:  # where `gcloud auth application-default login` writes (the fixture points CLOUDSDK_CONFIG at it)
        (tmp_path / "gcloud").mkdir()
        key.rename(tmp_path / "gcloud" / "application_default_credentials.json")
    client = GSBlobStore.make_client({})
    assert isinstance(client._credentials, service_account.Credentials)
    assert client._credentials.service_account_email == "dss@dss-test.iam.gserviceaccount.com"
    assert client.project == "dss-test"
    assert network.attempts == [] and network.default_calls == 0


def test_an_unloadable_key_file_is_refused_without_naming_it(monkeypatch, network, tmp_path):
    missing = tmp_path / "no-such-key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    with pytest.raises(BlobAccessDenied) as caught:
        GSBlobStore.make_client({})
    assert str(missing) not in str(caught.value)
    assert network.attempts == [] and network.default_calls == 0


def _key_file(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "key.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "dss-test", "private_key_id": "k1", "private_key": pem,
        "client_email": "dss@dss-test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token"}))
    return path
