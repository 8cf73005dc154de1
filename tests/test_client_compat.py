"""The real clients against one server: `hca` 7.0.1 over TLS with a configuration that names only the
swagger URL, and the DataBiosphere fork `dbio` 1.0.0 beside `hca` (each sends its own audience and claims).

`make test` installs the clients into .venv-hca and .venv-dbio and sets DSS_HCA_BIN and DSS_DBIO_BIN;
running this file alone needs `make hca-client dbio-client` first.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.identifiers import new_version
from tests.infra.dss_server import REPO, DSSServer, free_port, kill_group, start_server
from tests.infra.helpers import new_uuid
from tests.infra.receivers import self_signed_tls

pytestmark = pytest.mark.slow

HCA_EMAIL = "hca-uploader@dss-test.iam.gserviceaccount.com"
DBIO_EMAIL = "dbio-uploader@dss-test.iam.gserviceaccount.com"
# What dbio 1.0.0 sends when the spec names no `x-audience` (an OpenAPI 3 spec has no securityDefinitions).
DBIO_AUDIENCE = "https://auth.ucsc.ucsc-cgp-redwood.org"
DBIO_PROVIDER = {"audience": DBIO_AUDIENCE, "group_claim": f"{DBIO_AUDIENCE}/group",
                 "email_claim": f"{DBIO_AUDIENCE}/email"}


def _binary(variable: str, name: str) -> str:
    binary = os.environ.get(variable) or str(REPO / f".venv-{name}" / "bin" / name)
    if not Path(binary).exists():
        pytest.fail(f"The {name} client is not installed at {binary}: run `make {name}-client` (make test does).")
    return binary


def service_account(path: Path, email: str) -> dict:
    """A Google-style service-account key file, as `dss-ops.py service-account` writes one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {"type": "service_account", "client_email": email, "client_id": "1", "private_key_id": f"k-{email[:4]}",
               "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode()}
    path.write_text(json.dumps(account))
    return account


class Client:
    """Runs one CLI (`hca` or `dbio`) with its own configuration directory and service account."""

    def __init__(self, name: str, binary: str, home: Path, config: Mapping, extra_env: Mapping[str, str]) -> None:
        self.name, self.binary, self.home = name, binary, home
        (home / "config" / name).mkdir(parents=True)
        (home / "config" / name / "config.json").write_text(json.dumps(config))
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSS_")},
                    "XDG_CONFIG_HOME": str(home / "config"), "GOOGLE_APPLICATION_CREDENTIALS": str(home / "sa.json"),
                    **extra_env}

    def __call__(self, *args: str) -> str:
        result = subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True, timeout=300,
                                cwd=self.home)
        assert result.returncode == 0, f"{self.name} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self(*args))


def make_client(name: str, binary: str, home: Path, swagger: str, *, extra_env: Mapping[str, str] | None = None,
                secrets: bool = True) -> Client:
    home.mkdir(parents=True, exist_ok=True)
    config: dict = {"DSSClient": {"swagger_url": swagger}, "AuthClient": {"swagger_url": swagger}}
    if secrets:
        config["application_secrets"] = {"installed": {"client_id": "local"}}
    return Client(name, binary, home, config, extra_env or {})


# --- hca over https, configured with the swagger URL only ---------------------------------------------------

@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """`./dss-api` serving https on loopback (DSS_TLS_CERT/DSS_TLS_KEY); yields its URL, certificate and data dir."""
    _, cert = self_signed_tls(tmp_path, "localhost")
    port, data_dir = free_port(), tmp_path / "data"
    (tmp_path / "staging").mkdir()
    env = {**os.environ, "DSS_DATA_DIR": str(data_dir), "DSS_STAGING_ROOTS": str(tmp_path / "staging"),
           "DSS_PORT": str(port), "DSS_API_PROCESSES": "1", "DSS_TLS_CERT": str(cert),
           "DSS_TLS_KEY": str(cert.with_suffix(".key")), "DSS_CALLBACK_ALLOWLIST": "127.0.0.1/32"}
    url = f"https://localhost:{port}"
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "dss-api")], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                requests.get(f"{url}/version", verify=str(cert), timeout=2)
                break
            except (requests.ConnectionError, requests.Timeout):  # as wait_for: a busy machine may answer late
                assert time.monotonic() < deadline, "the TLS server did not start"
                time.sleep(0.1)
        yield url, cert, data_dir
    finally:
        kill_group(process)


def test_hca_over_https_with_only_the_swagger_url(tls_server, tmp_path):
    url, cert, data_dir = tls_server
    spec = requests.get(f"{url}/v1/swagger.json", verify=str(cert), timeout=30).json()
    assert spec["servers"] == [{"url": f"{url}/v1"}] and spec["host"] == url.removeprefix("https://")
    home = tmp_path / "hca"
    home.mkdir()
    # the README's way to a key file the server trusts
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "service-account", "--email",
                           HCA_EMAIL, "--key-file", str(home / "sa.json")], capture_output=True, text=True,
                          env={"DSS_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (home / "sa.json").stat().st_mode & 0o777 == 0o600
    # no application_secrets and no OAUTHLIB_INSECURE_TRANSPORT: the client fetches the former over https
    hca = make_client("hca", _binary("DSS_HCA_BIN", "hca"), home, f"{url}/v1/swagger.json", secrets=False,
                      extra_env={"REQUESTS_CA_BUNDLE": str(cert)})
    assert hca.json("dss", "get-subscriptions", "--replica", "aws") == {"subscriptions": []}
    created = hca.json("dss", "put-subscription", "--replica", "aws", "--callback-url", "http://127.0.0.1:9/hook")
    listed = hca.json("dss", "get-subscriptions", "--replica", "aws")["subscriptions"]
    assert [s["uuid"] for s in listed] == [created["uuid"]] and listed[0]["owner"] == HCA_EMAIL


# --- dbio and hca against one server ------------------------------------------------------------------------

@pytest.fixture
def two_clients(tmp_path, dss_env, aws_env, s3_bucket) -> Iterator[tuple[DSSServer, Client, Client, str]]:
    dss_env["DSS_IDENTITY_PROVIDERS"] = json.dumps([DBIO_PROVIDER])
    dss_env["DSS_CALLBACK_ALLOWLIST"] = "127.0.0.1/32"
    server = start_server(dss_env)
    swagger = f"{server.url}/v1/swagger.json"
    insecure = {"OAUTHLIB_INSECURE_TRANSPORT": "1"}
    clients = []
    for name, variable, email in (("hca", "DSS_HCA_BIN", HCA_EMAIL), ("dbio", "DSS_DBIO_BIN", DBIO_EMAIL)):
        home = tmp_path / name
        home.mkdir()
        server.runtime.keys.trust_service_account(service_account(home / "sa.json", email))
        clients.append(make_client(name, _binary(variable, name), home, swagger, extra_env=insecure))
    yield server, clients[0], clients[1], s3_bucket
    server.stop()


def test_dbio_beside_hca(two_clients, tmp_path):
    server, hca, dbio, bucket = two_clients
    source = tmp_path / "upload"
    source.mkdir()
    files = {"donor_organism_0.json": json.dumps({"organism": "Mus musculus", "client": "dbio"}).encode(),
             "reads.fastq": b"@r1\nACGT\n+\nIIII\n" * 50}
    for name, data in files.items():
        (source / name).write_bytes(data)

    uploaded = dbio.json("dss", "upload", "--src-dir", str(source), "--replica", "aws", "--staging-bucket", bucket,
                         "--no-progress")
    bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
    out = tmp_path / "dbio-download"
    dbio("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws", "--download-dir", str(out))
    for name, data in files.items():
        assert (out / f"{bundle_uuid}.{version}" / name).read_bytes() == data, name

    server.runtime.workers.drain(timeout=60)
    query = json.dumps({"query": {"match": {"files.donor_organism_json.client": "dbio"}}})
    found = dbio.json("dss", "post-search", "--replica", "aws", "--es-query", query)
    assert [r["bundle_fqid"] for r in found["results"]] == [f"{bundle_uuid}.{version}"]

    # subscriptions: each client sees its own, by the e-mail its provider's claim names
    mine = dbio.json("dss", "put-subscription", "--replica", "aws", "--callback-url", "http://127.0.0.1:9/dbio")
    theirs = hca.json("dss", "put-subscription", "--replica", "aws", "--callback-url", "http://127.0.0.1:9/hca")
    for client, created, email in ((dbio, mine, DBIO_EMAIL), (hca, theirs, HCA_EMAIL)):
        listed = client.json("dss", "get-subscriptions", "--replica", "aws")["subscriptions"]
        assert [(s["uuid"], s["owner"]) for s in listed] == [(created["uuid"], email)], client.name

    if (REPO / "dss" / "api" / "collections.py").exists():
        collection_uuid, collection_version = new_uuid(), new_version()
        item = {"type": "bundle", "uuid": bundle_uuid, "version": version}
        dbio("dss", "put-collection", "--replica", "aws", "--uuid", collection_uuid, "--version", collection_version,
             "--name", "dbio collection", "--description", "made by dbio", "--details", "{}",
             "--contents", json.dumps(item))
        collection = dbio.json("dss", "get-collection", "--replica", "aws", "--uuid", collection_uuid)
        assert collection["owner"] == DBIO_EMAIL and collection["contents"] == [item]
