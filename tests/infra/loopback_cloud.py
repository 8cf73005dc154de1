"""A whole DSS deployment on loopback emulators, provisioned only from `infra/definitions/`.

`deploy(...)` evaluates the definitions for a fresh stage (`dss.deploy.definitions.load`), creates every
resource in moto and the GCS emulator (`provision_emulators`), fills the generated secrets, creates every
daemon Lambda the definitions list on the Lambda harness (`tests/infra/lambda_runtime.py`) with the
stage's environment, maps each SQS-triggered one to its queue, and starts the API gateway. A resource the
code needs and the definitions lack fails whoever uses it.

Two settings differ from a real deployment, both to keep the tests short: the queues' visibility
timeout and receive count (`DSS_QUEUE_URL` query), and every Lambda's timeout is capped at
`TIMEOUT_CAP` — below the 60 s read timeout of moto's Step Functions Lambda client, so a long task
(a 300 MiB copy) saves its progress and is invoked again rather than being retried by botocore.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.infra.lambda_runtime import LambdaHarness, scheduled_event, start_gateway
from tests.infra.opensearch import unique_stage
from tests.infra.storage_servers import GCP_PROJECT

TIMEOUT_CAP = 45
QUEUE_URL = "sns://?max_receives=3&visibility=3&intent_delay=0"


@dataclass
class Deployment:
    stage: str
    definitions: Any
    harness: LambdaHarness
    environment: dict[str, str]
    api_url: str = ""
    made: dict[str, Any] = field(default_factory=dict)

    def function(self, key: str) -> str:
        """The Lambda name of definitions entry `key` (`sync`, `scheduled`, `task-copy-setup`, …)."""
        return str(self.definitions.lambdas[key]["name"])

    def invoke(self, key: str, event: Any = None) -> tuple[Any, bool]:
        """Invoke the Lambda of definitions entry `key`; a scheduled one gets its schedule's event."""
        name = self.function(key)
        if event is None and self.definitions.lambdas[key]["trigger"]["type"] == "schedule":
            event = scheduled_event(name)
        return self.harness.invoke(name, event or {})

    def bucket(self, key: str) -> str:
        return str(self.definitions.bucket(key))


def settings_for(stage: str, **extra: str) -> dict[str, str]:
    return {"DSS_AWS_REPLICA_URL": f"s3://{stage}-aws", "DSS_GCP_REPLICA_URL": f"gs://{stage}-gcp",
            "DSS_AWS_CHECKOUT_URL": f"s3://{stage}-aws-checkout", "DSS_GCP_CHECKOUT_URL": f"gs://{stage}-gcp-checkout",
            "DSS_QUEUE_URL": QUEUE_URL, **extra}


@contextlib.contextmanager
def deploy(endpoint: str, state_dir: Path, *, emulators: Mapping[str, str], stage: str | None = None,
           settings: Mapping[str, str] = {}, environment: Mapping[str, str] = {}, secrets: Mapping[str, str] = {},
           storage: Any = None, pubsub_host: str | None = None, gateway: bool = True,
           prefix: str = "c") -> Iterator[Deployment]:
    """A deployed stage (module docstring). `emulators`: loopback endpoints every Lambda gets
    (`STORAGE_EMULATOR_HOST`, …); `environment`: `DSS_*` settings on top of the definitions' (pushed into
    the SSM parameter too); `storage`: a `google.cloud.storage.Client` on the GCS emulator; `pubsub_host`:
    the Pub/Sub emulator, where the relay's topic and subscription are made."""
    from dss.deploy.definitions import load, provision_emulators
    from dss.secrets import SecretsManagerStore, initialise

    stage = stage or unique_stage(prefix)
    definitions = load(stage, settings_for(stage, DSS_GCP_PROJECT=GCP_PROJECT, **settings))
    environment = dict(environment)
    if pubsub_host:  # on the emulator the relay is told the subscription's whole path
        environment.setdefault("DSS_GCS_EVENTS_SUBSCRIPTION",
                               f"projects/{GCP_PROJECT}/subscriptions/{definitions.pubsub['subscription']}")
    harness = LambdaHarness(endpoint, state_dir)
    harness.set_environment(**emulators)
    made = provision_emulators(definitions, endpoint, secrets=secrets, environment=environment, storage=storage,
                               pubsub_host=pubsub_host, gcp_project=GCP_PROJECT)
    initialise(SecretsManagerStore(_secret_prefix(definitions), harness.secretsmanager()))
    lambda_env = {**definitions.environment, **environment}
    deployment = Deployment(stage, definitions, harness, lambda_env, made=made)
    for spec in definitions.lambdas.values():  # the API too: the gateway holds it warm, but it can be invoked
        harness.create_function(spec["name"], lambda_env, timeout=min(int(spec["timeout"]), TIMEOUT_CAP),
                                memory=int(spec["memory"]))
    try:
        for spec in definitions.lambdas.values():
            if spec["trigger"]["type"] == "sqs":
                harness.map_queue(spec["trigger"]["queue"], spec["name"], batch=int(spec["trigger"]["batch_size"]))
        if gateway:
            with start_gateway({**lambda_env, **emulators}, endpoint, state_dir / f"gateway-{stage}.log") as url:
                deployment.api_url = url
                yield deployment
        else:
            yield deployment
    finally:
        harness.stop()


def _secret_prefix(definitions: Any) -> str:
    """`dss/<stage>/`: the common prefix of the definitions' secret names."""
    names = list(definitions.secrets.values())
    return names[0].rsplit("/", 1)[0] + "/"


def gcs_environment(gcs_url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": gcs_url, "GOOGLE_CLOUD_PROJECT": GCP_PROJECT}


def describe(deployment: Deployment) -> str:
    """For assertion messages: the queues' depths, the pollers' errors and the functions' last warnings."""
    parts = []
    for poller in deployment.harness.pollers:
        attributes = deployment.harness.sqs.get_queue_attributes(QueueUrl=poller.queue_url,
                                                                 AttributeNames=["All"])["Attributes"]
        parts.append(f"{poller.function_name}: invocations={poller.invocations} errors={poller.errors[-3:]} "
                     f"visible={attributes.get('ApproximateNumberOfMessages')} "
                     f"in-flight={attributes.get('ApproximateNumberOfMessagesNotVisible')}")
    for spec in deployment.definitions.lambdas.values():
        lines = [line for line in deployment.harness.log(spec["name"]).splitlines()
                 if " WARNING " in line or " ERROR " in line or line.startswith("Traceback")]
        parts += [f"{spec['name']}: {line[:300]}" for line in lines[-3:]]
    return json.dumps(parts, indent=1)
