"""The serverless DSS end to end, on loopback emulators only (issue #12 §3).

One stage is provisioned from `infra/definitions/` (tests/infra/loopback_cloud.py) on a moto server whose
Lambda invocations each run the daemon's real code in a fresh Python process (tests/infra/lambda_runtime.py),
fake-gcs-server publishing its object events to the Pub/Sub emulator (tests/infra/gcs_events.py), and the
real OpenSearch node. The API is the Chalice handler behind a small local gateway; the client is the real
`hca` CLI; the webhook arrives at a real receiver.

aws → gcp: `hca dss upload` (small files and a 300 MiB file on the 202 path: a Step Functions copy) → SNS/SQS →
the sync Lambda (the big blob through the sync-large-blob state machine) → GCS; the index Lambda → OpenSearch →
a signed webhook from the notify Lambda; a bundle checkout (Step Functions) → `hca dss download` from `gcp`,
byte-identical. gcp → aws: an object written to the gcp bucket → fake-gcs-server's notification → Pub/Sub →
the gs-event-relay Lambda → SNS/SQS → the sync Lambda → S3. Behind the server's back on aws: a blob and its
file metadata put straight into the S3 bucket → moto's bucket notification → the S3 events topic → SQS → the
sync Lambda → GCS.

The scheduled Lambdas (notify, gs-event-relay) are invoked by the test, as EventBridge would invoke them.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.checksums import checksum_stream
from dss.files import FILE_FORMAT
from dss.identifiers import new_version
from tests.infra.dss_server import REPO
from tests.infra.gcs_events import GCSEventServers, gcs_event_servers
from tests.infra.helpers import poll_until
from tests.infra.lambda_runtime import aws_environment, proxy_event
from tests.infra.loopback_cloud import Deployment, deploy, describe
from tests.infra.opensearch import unique_stage
from tests.infra.receivers import Receiver, verify_cavage
from tests.infra.storage_servers import GCP_PROJECT
from tests.test_async_copy import upload_directory

pytestmark = pytest.mark.slow  # needs the hca client, which `make test` installs

MiB = 1024 * 1024
HANG_GUARD = 240.0  # seconds; only a hang exceeds it
SA_EMAIL = "hca-cloud@dss-test.iam.gserviceaccount.com"
SECRET = "cloud-e2e-hmac-secret"


def _service_account(path: Path) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = {"type": "service_account", "client_email": SA_EMAIL, "client_id": "1", "private_key_id": "cloud-1",
                "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()).decode()}
    path.write_text(json.dumps(key_file))
    return key_file


def _trusted(key_file: dict, scratch: Path) -> str:
    """The `service-accounts` secret trusting `key_file` (the format `dss-ops trust-service-account` writes)."""
    from dss.auth import KeyStore
    from dss.secrets import LocalSecretStore

    store = LocalSecretStore(scratch)
    KeyStore(store).trust_service_account(key_file)
    value = store.get("service-accounts")
    assert value is not None
    return value


@dataclass
class Cloud:
    deployment: Deployment
    gcs: GCSEventServers
    storage: Any  # google.cloud.storage.Client on fake-gcs-server
    staging_bucket: str
    hca_env: dict[str, str]
    cwd: Path

    @property
    def api(self) -> str:
        return self.deployment.api_url

    def hca(self, *args: str) -> str:
        binary = os.environ.get("DSS_HCA_BIN") or str(REPO / ".venv-hca" / "bin" / "hca")
        if not Path(binary).exists():
            pytest.fail(f"The hca client is not installed at {binary}: run `make hca-client` (make test does).")
        done = subprocess.run([binary, *args], env=self.hca_env, capture_output=True, text=True, timeout=600,
                              cwd=self.cwd, check=False)
        assert done.returncode == 0, f"hca {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def cloud(lambda_server: tuple[str, Path], opensearch_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    endpoint, state_dir = lambda_server
    scratch = tmp_path_factory.mktemp("cloud-e2e")
    stage = unique_stage("e")
    with pytest.MonkeyPatch.context() as env, \
            gcs_event_servers(scratch, project=GCP_PROJECT, topic=f"dss-gs-events-{stage}") as gcs:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                env.delenv(name)
        for name, value in {**aws_environment(endpoint), "AWS_CONFIG_FILE": str(scratch / "none"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "none"),
                            "STORAGE_EMULATOR_HOST": gcs.storage_url, "GOOGLE_CLOUD_PROJECT": GCP_PROJECT}.items():
            env.setenv(name, value)
        from google.cloud import storage as gcs_storage

        storage = gcs_storage.Client(project=GCP_PROJECT)
        key_file = _service_account(scratch / "service-account.json")
        emulators = {"STORAGE_EMULATOR_HOST": gcs.storage_url, "PUBSUB_EMULATOR_HOST": gcs.pubsub_host,
                     "GOOGLE_CLOUD_PROJECT": GCP_PROJECT}
        settings = {"DSS_SEARCH_URL": opensearch_url, "DSS_SEARCH_REFRESH_WRITES": "1",
                    "DSS_ASYNC_COPY_THRESHOLD": str(8 * MiB), "DSS_CALLBACK_ALLOWLIST": "127.0.0.0/8",
                    "DSS_BUNDLE_FILE_WAIT": "1", "DSS_NOTIFY_DELAYS": "1,2,4",
                    # an attempt may take this long: the notify Lambda stops starting them this long before
                    # its (loopback-capped) timeout
                    "DSS_NOTIFY_TIMEOUT": "10"}
        with deploy(endpoint, state_dir, emulators=emulators, stage=stage, environment=settings,
                    secrets={"service-accounts": _trusted(key_file, scratch / "trust")}, storage=storage,
                    pubsub_host=gcs.pubsub_host) as deployment:
            staging = f"{stage}-staging"
            deployment.harness.client("s3").create_bucket(Bucket=staging)
            config_home = scratch / "hca-config"
            (config_home / "hca").mkdir(parents=True)
            swagger = f"{deployment.api_url}/v1/swagger.json"
            (config_home / "hca" / "config.json").write_text(json.dumps({
                "DSSClient": {"swagger_url": swagger}, "AuthClient": {"swagger_url": swagger},
                "application_secrets": {"installed": {"client_id": "local"}}}))
            hca_env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSS_")},
                       "XDG_CONFIG_HOME": str(config_home), "GOOGLE_APPLICATION_CREDENTIALS": str(scratch /
                                                                                         "service-account.json"),
                       "OAUTHLIB_INSECURE_TRANSPORT": "1"}
            yield Cloud(deployment, gcs, storage, staging, hca_env, scratch)


class _Phases:
    """Prints how long each part of the story took (for the README's figures; nothing is asserted)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, what: str) -> None:
        now = time.monotonic()
        print(f"\n{what}: {now - self.last:.1f} s", end="")
        self.last = now


def _executions(cloud: Cloud, workflow: str) -> list[str]:
    arn = cloud.deployment.made["state_machines"][workflow]
    stepfunctions = cloud.deployment.harness.client("stepfunctions")
    return [e["status"] for e in stepfunctions.list_executions(stateMachineArn=arn)["executions"]]


@pytest.mark.timeout(900)  # a hang guard: the story takes a few minutes on a busy two-core machine
def test_hca_upload_replicates_indexes_notifies_checks_out_and_downloads_from_gcp(cloud: Cloud) -> None:
    deployment = cloud.deployment
    phases = _Phases()
    with Receiver() as receiver:
        subscription = json.loads(cloud.hca(
            "dss", "put-subscription", "--replica", "aws", "--callback-url", receiver.url("/cloud"),
            "--es-query", json.dumps({"query": {"match": {"files.donor_organism_json.organism": "Homo sapiens"}}}),
            "--hmac-secret-key", SECRET, "--hmac-key-id", "cloud-key"))["uuid"]

        # the metadata file is indexed as files.donor_organism_json
        source, files = upload_directory(cloud.cwd, 300 * MiB + 17, "donor_organism_0.json")
        uploaded = json.loads(cloud.hca("dss", "upload", "--src-dir", str(source), "--replica", "aws",
                                        "--staging-bucket", cloud.staging_bucket, "--no-progress"))
        bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
        phases("hca dss upload (300 MiB on the 202 path)")
        # the 202 path, on Step Functions (its last state may be recorded just after the file is there)
        poll_until(lambda: _executions(cloud, "blob-copy-write-metadata") == ["SUCCEEDED"], "the copy's end",
                   timeout=HANG_GUARD, pause=0.5, explain=lambda: describe(cloud.deployment))

        # Replication to GCS by the sync Lambda (the big blob through its state machine).
        poll_until(lambda: requests.get(f"{cloud.api}/v1/bundles/{bundle_uuid}", params={"replica": "gcp"},
                                        timeout=60).status_code == 200, "the bundle's replication to gcp",
                   timeout=HANG_GUARD, pause=0.5, explain=lambda: describe(cloud.deployment))
        poll_until(lambda: _executions(cloud, "sync-large-blob") == ["SUCCEEDED"], "the sync workflow's end",
                   timeout=HANG_GUARD, pause=0.5, explain=lambda: describe(cloud.deployment))
        phases("replication to gcp")

        # Indexing in OpenSearch by the index Lambda, and search through the API.
        query = json.dumps({"query": {"match": {"files.donor_organism_json.organism": "homo SAPIENS"}}})
        poll_until(lambda: json.loads(cloud.hca("dss", "post-search", "--replica", "aws", "--es-query", query))[
            "results"], "the bundle's indexing", timeout=HANG_GUARD, pause=0.5,
                   explain=lambda: describe(cloud.deployment))
        found = json.loads(cloud.hca("dss", "post-search", "--replica", "aws", "--es-query", query))
        assert [r["bundle_fqid"] for r in found["results"]] == [f"{bundle_uuid}.{version}"]
        phases("indexing and search")

        # The notify Lambda, on its schedule, delivers the signed webhook.
        def notify() -> None:
            report, errored = deployment.invoke("notify")
            assert not errored, report

        [hook] = poll_until(lambda: receiver.requests, "the webhook", step=notify, timeout=HANG_GUARD, pause=0.5,
                            explain=lambda: describe(cloud.deployment))
        verify_cavage(hook, SECRET, "cloud-key")
        body = json.loads(hook.body)
        assert (body["subscription_id"], body["match"]["bundle_uuid"]) == (subscription, bundle_uuid)
        phases("webhook")

    # A bundle checkout on gcp (Step Functions), then the download from gcp, byte-identical.
    job = json.loads(cloud.hca("dss", "post-bundles-checkout", "--uuid", bundle_uuid, "--replica", "gcp"))
    def checkout_status() -> str | None:
        status = json.loads(cloud.hca("dss", "get-bundles-checkout", "--checkout-job-id", job["checkout_job_id"],
                                      "--replica", "gcp"))["status"]
        return None if status == "RUNNING" else status

    assert poll_until(checkout_status, "the checkout", timeout=HANG_GUARD, pause=0.5,
                      explain=lambda: describe(cloud.deployment)) == "SUCCEEDED"
    phases("checkout")
    out = cloud.cwd / "download-gcp"
    cloud.hca("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "gcp", "--download-dir", str(out))
    phases("hca dss download from gcp")
    for name, data in files.items():
        assert (out / f"{bundle_uuid}.{version}" / name).read_bytes() == data, name


def test_a_write_to_the_gcp_bucket_reaches_s3_through_pubsub_and_the_relay(cloud: Cloud) -> None:
    deployment = cloud.deployment
    data = os.urandom(64 * 1024)
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    cloud.storage.bucket(deployment.bucket("gcp_replica")).blob(key).upload_from_string(data)
    s3 = deployment.harness.client("s3")

    def in_s3() -> bool:
        try:
            return s3.get_object(Bucket=deployment.bucket("aws_replica"), Key=key)["Body"].read() == data
        except s3.exceptions.NoSuchKey:
            return False

    def relay() -> None:
        report, errored = deployment.invoke("gs-event-relay")
        assert not errored, report

    poll_until(in_s3, "the gcp write's replication to S3 through the relay", step=relay, timeout=HANG_GUARD, pause=0.5,
               explain=lambda: describe(cloud.deployment))
    assert "GCS event relay" in deployment.harness.log(deployment.function("gs-event-relay"))


def test_a_write_behind_the_server_back_to_s3_reaches_gcp_through_s3_events(cloud: Cloud) -> None:
    """A blob and its file metadata put straight into the aws replica's bucket (as an operator's copy or a
    restore would) → the bucket notification → the S3 events topic → SQS → the sync Lambda → GCS,
    byte-identical, with no reconcile pass (the scheduled Lambda is never invoked here)."""
    deployment = cloud.deployment
    data = os.urandom(48 * 1024)
    sums = checksum_stream(io.BytesIO(data), len(data))
    version = new_version()
    file_key = f"files/{uuid.uuid4()}.{version}"
    metadata = json.dumps({"format": FILE_FORMAT, "creator_uid": 0, "version": version,
                           "content-type": "application/octet-stream", "size": len(data), "crc32c": sums.crc32c,
                           "s3-etag": sums.s3_etag, "sha1": sums.sha1, "sha256": sums.sha256}).encode()
    s3, bucket = deployment.harness.client("s3"), deployment.bucket("aws_replica")
    s3.put_object(Bucket=bucket, Key=str(sums.blob_key), Body=data, ContentType="application/octet-stream")
    s3.put_object(Bucket=bucket, Key=file_key, Body=metadata, ContentType="application/json")
    gcp = cloud.storage.bucket(deployment.bucket("gcp_replica"))

    def in_gcs(key: str) -> bytes | None:
        blob = gcp.get_blob(key)
        return None if blob is None else blob.download_as_bytes()

    assert poll_until(lambda: in_gcs(file_key), "the file's replication to gcp through S3 events",
                      timeout=HANG_GUARD, pause=0.5, explain=lambda: describe(cloud.deployment)) == metadata
    assert in_gcs(str(sums.blob_key)) == data  # the sync handler copies a file's blob before the file


def test_the_api_lambda_answers_an_api_gateway_event_in_a_fresh_process(cloud: Cloud) -> None:
    """The API function itself, invoked as API Gateway invokes it (a cold start with the stage's environment)."""
    deployment = cloud.deployment
    event = proxy_event("GET", "/internal/health", stage=deployment.stage)
    answer, errored = deployment.invoke("api", event)
    assert not errored, answer
    assert answer["statusCode"] == 200, answer
    missing = proxy_event("GET", "/v1/bundles/0a1b2c3d-0000-4000-8000-0000000000b1?replica=gcp", stage=deployment.stage)
    answer, errored = deployment.invoke("api", missing)
    assert (errored, answer["statusCode"]) == (False, 404), answer
    assert json.loads(answer["body"])["code"] == "not_found", answer
