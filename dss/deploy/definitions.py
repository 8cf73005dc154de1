"""The deployment's resources, evaluated from the one place that defines them: `infra/definitions/`.

That directory is a provider-less Terraform module (variables, locals, outputs). The Terraform components
(`infra/aws`, `infra/gcp`) create one real resource per entry of its outputs; this module evaluates the
same outputs for a stage so that Python sees exactly the same names::

    definitions = load("dev", {"DSS_AWS_REPLICA_URL": "s3://my-bucket", ...})
    definitions.queues["sync"]["name"]           # dss-events-dev-sync
    provision_emulators(definitions, moto_url)   # everything, in moto (and the GCS/Pub/Sub emulators)

`load` copies the module's `.tf` files into a temporary directory, runs `terraform init` and `terraform
apply` there (local state, no provider, no network) and reads `terraform output -json`; the result is
cached per (stage, settings) for the life of the process. `settings` are `DSS_*` settings, as in an
environment file; those the module takes are listed in `SETTINGS`, the others are ignored.

The loopback cloud tests provision only through `provision_emulators`, so a resource the code needs and
the Terraform lacks fails them.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.aws import error_code
from dss.events.s3_events import provision_notification
from dss.events.sqs import provision as provision_bus
from dss.workflows.binding import lambda_arns
from dss.workflows.definitions import DEFINITIONS_DIR
from dss.workflows.stepfunctions import deploy_state_machines

__all__ = ["Definitions", "DefinitionsError", "SETTINGS", "MODULE_DIR", "load", "variables", "evaluate",
           "provision_emulators", "table_schema"]

logger = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parents[2] / "infra" / "definitions"

# DSS_* setting -> the module variable it sets.
SETTINGS = {
    "DSS_AWS_REPLICA_URL": "aws_replica_url",
    "DSS_GCP_REPLICA_URL": "gcp_replica_url",
    "DSS_AWS_CHECKOUT_URL": "aws_checkout_url",
    "DSS_GCP_CHECKOUT_URL": "gcp_checkout_url",
    "DSS_QUEUE_URL": "queue_url",
    "DSS_BLOB_TTL_DAYS": "blob_ttl_days",
    "DSS_GCP_PROJECT": "gcp_project",
}
_TIMEOUT = 120.0  # seconds for each terraform command (a busy machine; it normally takes well under one)


class DefinitionsError(Exception):
    """The definitions could not be evaluated (no terraform, invalid settings, a failing module)."""


@dataclass(frozen=True)
class Definitions:
    """The outputs of `infra/definitions/` for one stage (see its `outputs.tf` for each attribute)."""

    stage: str
    buckets: dict[str, dict[str, Any]]
    topic: str
    queues: dict[str, dict[str, Any]]
    s3_events: dict[str, Any]
    pubsub: dict[str, Any]
    tables: dict[str, dict[str, str]]
    state_machines: dict[str, dict[str, Any]]
    task_function_prefix: str
    lambdas: dict[str, dict[str, Any]]
    secrets: dict[str, str]
    ssm_parameters: dict[str, str]
    environment: dict[str, str]
    search: dict[str, str]

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any]) -> Definitions:
        """From `terraform output -json` (each output as `{"value": …, "type": …}`)."""
        return cls(**{name: outputs[name]["value"] for name in cls.__dataclass_fields__})

    def bus_resources(self) -> dict[str, Any]:
        """The event bus in the shape of `dss.events.sqs.resources()`, for `dss.events.sqs.provision()`: the
        S3 events topic is a source of every handler queue."""
        return {"topic": self.topic, "sources": [self.s3_events["topic"]], "queues": self.queues}

    def bucket(self, key: str) -> str:
        """The bucket name of `aws_replica`, `gcp_replica`, `aws_checkout` or `gcp_checkout`."""
        return str(self.buckets[key]["name"])


def variables(stage: str, settings: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The module's variables for `stage` and the `DSS_*` settings (a `terraform.tfvars.json` body)."""
    chosen: dict[str, Any] = {"stage": stage}
    for setting, variable in SETTINGS.items():
        value = (settings or {}).get(setting)
        if value not in (None, ""):
            chosen[variable] = value
    if "blob_ttl_days" in chosen:
        try:
            chosen["blob_ttl_days"] = float(chosen["blob_ttl_days"])
        except ValueError:
            raise DefinitionsError(f"DSS_BLOB_TTL_DAYS must be a number, got {chosen['blob_ttl_days']!r}") from None
    return chosen


def load(stage: str, settings: Mapping[str, str] | None = None) -> Definitions:
    """The definitions of `stage` with `settings` (cached per process; see the module docstring)."""
    chosen = variables(stage, settings)
    return _load(tuple(sorted((k, json.dumps(v)) for k, v in chosen.items())))


@functools.lru_cache(maxsize=32)
def _load(frozen: tuple[tuple[str, str], ...]) -> Definitions:
    chosen = {key: json.loads(value) for key, value in frozen}
    chosen.setdefault("definitions_dir", str(DEFINITIONS_DIR))
    return Definitions.from_outputs(evaluate(MODULE_DIR, chosen))


def evaluate(module: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """`terraform output -json` of the provider-less `module` applied with `values`, in a scratch copy."""
    terraform = shutil.which("terraform")
    if terraform is None:
        raise DefinitionsError("terraform is not on the PATH (it evaluates infra/definitions)")
    with tempfile.TemporaryDirectory(prefix="dss-definitions-") as scratch:
        work = Path(scratch)
        for source in module.glob("*.tf"):
            shutil.copy(source, work / source.name)
        (work / "values.tfvars.json").write_text(json.dumps(dict(values)))
        _terraform(terraform, work, "init", "-input=false", "-backend=false", "-no-color")
        _terraform(terraform, work, "apply", "-input=false", "-auto-approve", "-no-color",
                   "-var-file=values.tfvars.json")
        return dict(json.loads(_terraform(terraform, work, "output", "-json", "-no-color")))


def _terraform(binary: str, work: Path, *arguments: str) -> str:
    try:
        done = subprocess.run([binary, *arguments], cwd=work, capture_output=True, text=True, timeout=_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise DefinitionsError(f"terraform {arguments[0]} did not finish within {_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise DefinitionsError(f"terraform {arguments[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


# --- the emulators ----------------------------------------------------------------------------------------
def provision_emulators(definitions: Definitions, endpoint: str | None = None, *, region: str = "us-east-1",
                        secrets: Mapping[str, str] | None = None, environment: Mapping[str, str] | None = None,
                        state_machine_role: str | None = None, storage: Any = None, pubsub_host: str | None = None,
                        gcp_project: str | None = None, gcs_notification: bool = False) -> dict[str, Any]:
    """Create every resource of `definitions` in moto at `endpoint` (None: boto3's own configuration), the
    gcp buckets on the GCS emulator when `storage` (a `google.cloud.storage.Client`) is given, and the
    Pub/Sub topic and the relay's subscription on the Pub/Sub emulator at `pubsub_host` (`host:port`, its
    REST API) when given. Idempotent.

    `secrets` gives test values by secret key (`url-signing-key`, …); the others are created empty.
    `environment` is added to `definitions.environment` in the SSM parameter. The Pub/Sub project is the
    definitions' (`DSS_GCP_PROJECT`), else `gcp_project`. `gcs_notification` also creates the replica
    bucket's Pub/Sub notification through `storage` (for an emulator that has notification configs;
    fake-gcs-server takes its topic from its command line instead). The aws replica bucket's notification
    sends its object events to the S3 events topic (moto delivers them through SNS to the queues). Returns
    what was made: the topic ARNs and queue URLs by name (`dss.events.sqs.provision`), `state_machines` by
    workflow, and `pubsub`."""
    import boto3

    session = boto3.session.Session(region_name=region)

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint)  # type: ignore[call-overload]

    made: dict[str, Any] = dict(provision_bus(definitions.bus_resources(), client("sns"), client("sqs")))
    _buckets(client("s3"), definitions, region)
    provision_notification(client("s3"), client("sns"), definitions.s3_events["bucket"],
                           made[definitions.s3_events["topic"]], definitions.s3_events["events"])
    _tables(client("dynamodb"), definitions)
    _secrets(client("secretsmanager"), definitions, secrets or {})
    client("ssm").put_parameter(Name=definitions.ssm_parameters["environment"], Type="String", Overwrite=True,
                                Value=json.dumps({**definitions.environment, **(environment or {})}))
    account = str(client("sts").get_caller_identity()["Account"])
    role = state_machine_role or f"arn:aws:iam::{account}:role/dss-{definitions.stage}-states"
    made["state_machines"] = deploy_state_machines(
        client("stepfunctions"), definitions.stage, role,
        lambda_arns(region, account, definitions.task_function_prefix), list(definitions.state_machines))
    if storage is not None:
        _gcs_buckets(storage, definitions)
    if pubsub_host is not None:
        made["pubsub"] = _pubsub(pubsub_host, definitions, gcp_project)
        if gcs_notification and storage is not None:
            _gcs_notification(storage, definitions, made["pubsub"]["project"])
    logger.info("Provisioned the emulators for stage %s", definitions.stage)
    return made


def _exists(error: Exception, *codes: str) -> bool:
    return error_code(error) in codes


def _buckets(s3: Any, definitions: Definitions, region: str) -> None:
    from botocore.exceptions import ClientError

    for bucket in definitions.buckets.values():
        if bucket["cloud"] != "aws":
            continue
        where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            s3.create_bucket(Bucket=bucket["name"], **where)
        except ClientError as e:
            if not _exists(e, "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        if bucket["expiration_days"]:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket["name"], LifecycleConfiguration={"Rules": [{
                "ID": "expire-checkouts", "Status": "Enabled", "Filter": {"Prefix": ""},
                "Expiration": {"Days": int(bucket["expiration_days"])}}]})


def table_schema(table: Mapping[str, Any]) -> dict[str, Any]:
    """The DynamoDB `CreateTable` arguments of one entry of `Definitions.tables`."""
    schema: dict[str, Any] = {
        "TableName": table["name"], "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": table["hash_key"], "KeyType": "HASH"},
                      {"AttributeName": table["sort_key"], "KeyType": "RANGE"}],
        "AttributeDefinitions": [{"AttributeName": name, "AttributeType": kind}
                                 for name, kind in table["attributes"].items()]}
    if table["indexes"]:
        schema["GlobalSecondaryIndexes"] = [{
            "IndexName": index["name"],
            "KeySchema": [{"AttributeName": index["hash_key"], "KeyType": "HASH"},
                          {"AttributeName": index["range_key"], "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": index["projection"],
                           **({"NonKeyAttributes": index["non_key_attributes"]}
                              if index["non_key_attributes"] else {})}} for index in table["indexes"]]
    return schema


def _tables(dynamodb: Any, definitions: Definitions) -> None:
    from botocore.exceptions import ClientError

    for table in definitions.tables.values():
        try:
            dynamodb.create_table(**table_schema(table))
        except ClientError as e:
            if not _exists(e, "ResourceInUseException"):
                raise


def _secrets(manager: Any, definitions: Definitions, values: Mapping[str, str]) -> None:
    unknown = set(values) - set(definitions.secrets)
    if unknown:
        raise DefinitionsError(f"no such secrets in the definitions: {sorted(unknown)}")
    for key, name in definitions.secrets.items():
        value = {"SecretString": values[key]} if key in values else {}
        try:
            manager.create_secret(Name=name, **value)
        except manager.exceptions.ResourceExistsException:
            if value:
                manager.put_secret_value(SecretId=name, **value)


def _gcs_buckets(storage: Any, definitions: Definitions) -> None:
    from google.api_core.exceptions import Conflict

    for bucket in definitions.buckets.values():
        if bucket["cloud"] == "gcp":
            try:
                storage.create_bucket(bucket["name"])
            except Conflict:
                pass


def _pubsub(host: str, definitions: Definitions, gcp_project: str | None) -> dict[str, str]:
    import requests

    project = definitions.pubsub["project"] or gcp_project
    if not project:
        raise DefinitionsError("a GCP project is needed for Pub/Sub (DSS_GCP_PROJECT or gcp_project=)")
    topic = f"projects/{project}/topics/{definitions.pubsub['topic']}"
    subscription = f"projects/{project}/subscriptions/{definitions.pubsub['subscription']}"
    for path, body in ((topic, {}), (subscription, {"topic": topic,
                                                    "ackDeadlineSeconds": int(definitions.pubsub["ack_deadline"])})):
        response = requests.put(f"http://{host}/v1/{path}", json=body, timeout=30)
        if response.status_code not in (200, 409):  # 409: it exists
            raise DefinitionsError(f"Pub/Sub emulator: PUT {path} answered {response.status_code}")
    return {"project": project, "topic": topic, "subscription": subscription}


def _gcs_notification(storage: Any, definitions: Definitions, project: str) -> None:
    bucket = storage.bucket(definitions.pubsub["bucket"])
    wanted = definitions.pubsub["topic"]
    if any(n.topic_name == wanted for n in bucket.list_notifications()):
        return
    bucket.notification(topic_name=wanted, topic_project=project, event_types=definitions.pubsub["event_types"],
                        payload_format="JSON_API_V1").create()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dss.deploy.definitions STAGE [DSS_NAME=value ...]`: the definitions as JSON."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0].startswith("-"):
        print(main.__doc__, file=sys.stderr)
        return 2
    settings = dict(argument.split("=", 1) for argument in arguments[1:] if "=" in argument)
    definitions = load(arguments[0], settings)
    print(json.dumps({name: getattr(definitions, name) for name in Definitions.__dataclass_fields__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
