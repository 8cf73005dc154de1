"""The daemon Lambdas (`daemons/*/app.py`, `dss/daemons.py`) on the loopback cloud: each invocation a fresh
Python process (tests/infra/lambda_runtime.py), every resource provisioned from `infra/definitions/`.

Fault cases: an invocation that raises is retried by SQS and dead-lettered after the configured receives;
the scheduled daemon's re-drive puts it back and it then succeeds; a duplicate delivery changes nothing.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dss.checksums import checksum_stream
from dss.events import Event
from dss.events.sqs import SQSEventBus, parse_queue_url
from tests.infra.dss_server import REPO
from tests.infra.helpers import poll_until
from tests.infra.lambda_runtime import handler_of
from tests.infra.loopback_cloud import QUEUE_URL, Deployment, deploy, describe, gcs_environment
from tests.infra.storage_servers import GCP_PROJECT

HANG_GUARD = 120.0  # seconds; only a hang exceeds it
APPS = sorted(p.parent.name for p in (REPO / "daemons").glob("*/app.py"))


@pytest.fixture
def gcs(gcs_env: str):
    """A client of the GCS emulator the Lambdas use."""
    from google.cloud import storage

    return storage.Client(project=GCP_PROJECT)


@pytest.fixture
def without_gcp_buckets(lambda_cloud_env, gcs_emulator) -> Iterator[Deployment]:
    """A stage whose GCS buckets were not created yet: replication to `gcp` fails until they are."""
    endpoint, state_dir = lambda_cloud_env
    with deploy(endpoint, state_dir, emulators=gcs_environment(gcs_emulator), gateway=False, prefix="d") as made:
        yield made


def _bus(deployment: Deployment) -> SQSEventBus:
    harness = deployment.harness
    return SQSEventBus(parse_queue_url(QUEUE_URL, deployment.stage), ("sync", "index", "journal"),
                       harness.client("sns"), harness.sqs)


def _dead(deployment: Deployment, handler: str) -> int:
    url = deployment.harness.sqs.get_queue_url(QueueName=deployment.definitions.queues[handler]["dead_letter_queue"])
    attributes = deployment.harness.sqs.get_queue_attributes(
        QueueUrl=url["QueueUrl"], AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def _poller(deployment: Deployment, handler: str):
    return next(p for p in deployment.harness.pollers if p.function_name == deployment.function(handler))


def test_a_failing_sync_is_dead_lettered_redriven_and_then_succeeds(without_gcp_buckets: Deployment, gcs) -> None:
    deployment = without_gcp_buckets
    data = os.urandom(4096)
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    s3 = deployment.harness.client("s3")
    # The write's one event is the replica bucket's S3 notification (dss.events.s3_events).
    s3.put_object(Bucket=deployment.bucket("aws_replica"), Key=key, Body=data)

    poll_until(lambda: _dead(deployment, "sync") == 1, "the failing sync to reach the dead-letter queue",
               timeout=HANG_GUARD, pause=0.2, explain=lambda: describe(deployment))
    max_receives = deployment.definitions.queues["sync"]["max_receive_count"]
    assert _poller(deployment, "sync").invocations >= max_receives  # tried once per receive, then given up
    assert "sync failed" in deployment.harness.log(deployment.function("sync"))  # the bucket is missing (404)

    gcs.create_bucket(deployment.bucket("gcp_replica"))
    report, errored = deployment.invoke("scheduled")
    assert not errored, report
    assert report["redriven"] == 1, report
    bucket = gcs.bucket(deployment.bucket("gcp_replica"))
    poll_until(lambda: bucket.get_blob(key) is not None, "the re-driven sync to copy the blob",
               timeout=HANG_GUARD, pause=0.2, explain=lambda: describe(deployment))
    assert bucket.get_blob(key).download_as_bytes() == data
    assert _dead(deployment, "sync") == 0

    # A duplicate delivery of the same event changes nothing: the copy is not written again.
    generation = bucket.get_blob(key).generation
    before = _poller(deployment, "sync").invocations
    _bus(deployment).publish(Event("aws", key))
    poll_until(lambda: _poller(deployment, "sync").invocations > before, "the duplicate's delivery",
               timeout=HANG_GUARD, pause=0.2, explain=lambda: describe(deployment))
    poll_until(lambda: not _poller(deployment, "sync").busy, "the duplicate's handling",
               timeout=HANG_GUARD, pause=0.2, explain=lambda: describe(deployment))
    assert bucket.get_blob(key).generation == generation
    assert _dead(deployment, "sync") == 0


def test_function_names_map_to_the_daemon_apps() -> None:
    assert handler_of("dss-dev-sync", "dev") == (REPO / "daemons" / "sync" / "app.py", "sync")
    assert handler_of("dss-dev-gs-event-relay", "dev") == (REPO / "daemons" / "gs-event-relay" / "app.py",
                                                           "gs_event_relay")
    assert handler_of("dss-dev-task-copy-setup", "dev") == (REPO / "daemons" / "workflows" / "app.py",
                                                            "task_copy_setup")


_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
app = module.app
names = sorted([s.name for s in app.event_sources] + [f.name for f in app.pure_lambda_functions])
print(json.dumps({"names": names, "dss": sys.modules["dss"].__file__}))
"""


@pytest.mark.parametrize("packaged", [False, True], ids=["checkout", "packaged"])
def test_every_daemon_app_imports_from_the_checkout_and_when_packaged(tmp_path: Path, packaged: bool) -> None:
    """Chalice imports each app when it packages it: with `dss` one level up in the checkout, or in
    `chalicelib/` beside `app.py` in the package. Importing builds no Runtime and needs no cloud."""
    import json

    from dss.workflows.registry import default_registry

    expected = {"workflows": sorted(f"task-{t}" for t in default_registry().names())}
    for name in APPS:
        app = REPO / "daemons" / name / "app.py"
        if packaged:
            package = tmp_path / name
            (package / "chalicelib").mkdir(parents=True)
            shutil.copy(app, package / "app.py")
            shutil.copytree(REPO / "dss", package / "chalicelib" / "dss",
                            ignore=shutil.ignore_patterns("__pycache__"))
            app = package / "app.py"
        env = {"PATH": os.environ["PATH"], "DSS_DEPLOYMENT_STAGE": "probe", "HOME": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", _PROBE, str(app)], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        probe = json.loads(done.stdout)
        assert probe["names"] == expected.get(name, [name]), name
        assert Path(probe["dss"]).parent.parent == (app.parent / "chalicelib" if packaged else REPO), probe


def test_records_not_reached_in_time_are_left_for_a_retry(aws_env: str, tmp_path: Path) -> None:
    """`handle_queue` runs no handler once the invocation's time is nearly up: every remaining record is
    reported in `batchItemFailures`, so SQS delivers it again (nothing is lost, nothing half-done)."""
    import json

    from dss import daemons
    from dss.config import Config
    from dss.runtime import Runtime

    runtime = Runtime(Config.from_env({"DSS_DATA_DIR": str(tmp_path / "data"), "DSS_QUEUE_URL": "sns://"}))
    called: list[Event] = []
    runtime.handlers["sync"] = called.append
    records = [{"messageId": f"m{n}", "receiptHandle": f"r{n}", "attributes": {"ApproximateReceiveCount": "1"},
                "body": json.dumps({"replica": "aws", "key": f"bundles/{n}"})} for n in range(3)]
    clock = iter([60.0, 60.0, 0.0])  # time for two records, then none
    reply = daemons.handle_queue(runtime, "sync", {"Records": records}, lambda: next(clock))
    assert reply == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert [e.key for e in called] == ["bundles/0", "bundles/1"]
    with pytest.raises(TypeError, match="SNS/SQS"):
        local = Runtime(Config.from_env({"DSS_DATA_DIR": str(tmp_path / "local")}))
        daemons.handle_queue(local, "sync", {"Records": records}, lambda: 60.0)
