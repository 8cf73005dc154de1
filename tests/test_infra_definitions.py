"""The deployment's resource definitions (`infra/definitions/`, evaluated by `dss.deploy.definitions`), their
agreement with the code's naming functions, provisioning moto from them, and the IAM policy templates.
They need `terraform` on the PATH (dss.deploy.definitions says so when it is missing)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dss.deploy import definitions as deploy
from dss.deploy import policies
from dss.events import gcs_relay, s3_events
from dss.events.sqs import bus_name, parse_queue_url, resources
from dss.workflows import definitions as workflow_definitions
from dss.workflows.binding import task_names
from dss.workflows.registry import default_registry
from dss.workflows.stepfunctions import state_machine_name, task_function_prefix

STAGES = ("dev", "prod2")
# Every table name the code opens through Runtime.tables (dss/runtime.py and the workflow tasks' records).
CODE_TABLES = {"subscriptions", "owners", "async-state", "collections", "checkout"}


@pytest.mark.parametrize("stage", STAGES)
def test_names_match_the_code(stage: str) -> None:
    d = deploy.load(stage)
    assert d.stage == stage
    assert d.topic == bus_name(stage)
    assert d.bus_resources() == resources(parse_queue_url("sns://", stage), ("sync", "index", "journal"),
                                          sources=[s3_events.topic_name(stage)])
    assert d.s3_events == {"topic": s3_events.topic_name(stage), "bucket": d.bucket("aws_replica"),
                           "events": list(s3_events.EVENT_TYPES)}
    assert d.task_function_prefix == task_function_prefix(stage)
    assert {w: m["name"] for w, m in d.state_machines.items()} == {
        w: state_machine_name(stage, w) for w in workflow_definitions.names()}
    for workflow, machine in d.state_machines.items():
        assert machine["tasks"] == sorted(task_names(workflow_definitions.load(workflow)))
        assert machine["definition_file"] == f"dss/workflows/definitions/{workflow}.json"
    tasks = {key[len("task-"):]: fn for key, fn in d.lambdas.items() if fn["kind"] == "task"}
    assert set(tasks) == default_registry().names()
    assert all(fn["name"] == task_function_prefix(stage) + task for task, fn in tasks.items())
    assert CODE_TABLES <= set(d.tables)
    assert all(t["name"] == f"dss-{stage}-{name}" and (t["hash_key"], t["sort_key"]) == ("hash_key", "sort_key")
               for name, t in d.tables.items())
    assert {fn["name"] for fn in d.lambdas.values() if fn["kind"] != "task"} == {
        f"dss-{stage}-{n}" for n in ("api", "sync", "index", "journal", "notify", "gs-event-relay", "scheduled")}
    assert d.secrets["url-signing-key"] == f"dss/{stage}/url-signing-key"
    assert d.ssm_parameters == {"environment": f"/dss/{stage}/environment"}
    assert d.environment["DSS_SECRETS_URL"] == f"secretsmanager://dss/{stage}/"
    assert (d.pubsub["topic"], d.pubsub["subscription"]) == (gcs_relay.topic_name(stage),
                                                              gcs_relay.subscription_name(stage))


def test_lambda_handlers_exist() -> None:
    """Each daemon Lambda's handler (`app.<name>` in its source directory) is defined by that app."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    modules: dict[str, Any] = {}
    for key, fn in deploy.load("dev").lambdas.items():
        if fn["kind"] == "api":
            assert (fn["source"], fn["handler"]) == ("chalice", "app.app")
            continue
        module_name, attribute = fn["handler"].split(".")
        if fn["source"] not in modules:
            spec = importlib.util.spec_from_file_location(f"_c_{key}", root / fn["source"] / f"{module_name}.py")
            assert spec is not None and spec.loader is not None
            modules[fn["source"]] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[fn["source"]])
        assert callable(getattr(modules[fn["source"]], attribute, None)), (key, fn["handler"])


def test_tables_match_the_code_schemas() -> None:
    from dss.notify import dynamodb as deliveries

    d = deploy.load("dev")
    assert deliveries.TABLE in d.tables
    assert _canonical(deploy.table_schema(d.tables[deliveries.TABLE])) == _canonical(
        deliveries.table_schema(d.tables[deliveries.TABLE]["name"]))


def _canonical(schema: dict) -> dict:
    """A CreateTable request with its lists in a fixed order."""
    def ordered(value: object) -> object:
        if isinstance(value, dict):
            return {k: ordered(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted((ordered(v) for v in value), key=json.dumps)
        return value
    return ordered(schema)  # type: ignore[return-value]


def test_settings_reach_the_definitions() -> None:
    settings = {"DSS_AWS_REPLICA_URL": "s3://lab-replica", "DSS_GCP_CHECKOUT_URL": "gs://lab-checkout",
                "DSS_QUEUE_URL": "sns://lab-bus?max_receives=3&visibility=600", "DSS_BLOB_TTL_DAYS": "7",
                "DSS_UNRELATED": "ignored"}
    d = deploy.load("lab", settings)
    assert d.bucket("aws_replica") == "lab-replica" and d.bucket("gcp_checkout") == "lab-checkout"
    assert d.bucket("gcp_replica") == "dss-lab-replica"
    assert d.buckets["gcp_checkout"]["expiration_days"] == 7 and d.buckets["aws_replica"]["expiration_days"] == 0
    assert d.bus_resources() == resources(parse_queue_url(settings["DSS_QUEUE_URL"], "lab"),
                                          ("sync", "index", "journal"), sources=["dss-s3-events-lab"])
    assert d.s3_events["bucket"] == "lab-replica"
    assert d.pubsub["bucket"] == "dss-lab-replica"
    assert deploy.load("lab", settings) is d  # cached per (stage, settings)


@pytest.mark.parametrize("settings", [{"DSS_AWS_REPLICA_URL": "s3://Not_A_Bucket"}, {"DSS_QUEUE_URL": "sqlite://x"},
                                      {"DSS_BLOB_TTL_DAYS": "soon"}])
def test_invalid_settings_are_refused(settings: dict[str, str]) -> None:
    with pytest.raises(deploy.DefinitionsError):
        deploy.load("dev", settings)


def test_invalid_stage_is_refused() -> None:
    with pytest.raises(deploy.DefinitionsError, match="stage"):
        deploy.load("Dev_1")


def test_provision_emulators_in_moto(aws_env: str) -> None:
    import boto3

    d = deploy.load("prov")
    arguments: dict[str, Any] = {"secrets": {"admin-emails": "ops@example.org"},
                 "environment": {"DSS_SEARCH_URL": "https://search.example"}}
    made = deploy.provision_emulators(d, aws_env, **arguments)
    again = deploy.provision_emulators(d, aws_env, **arguments)  # idempotent
    assert again["state_machines"] == made["state_machines"]
    sqs, s3 = boto3.client("sqs"), boto3.client("s3")
    for queue in d.queues.values():
        url = sqs.get_queue_url(QueueName=queue["name"])["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == str(queue["visibility_timeout"])
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(":" + queue["dead_letter_queue"])
        assert int(redrive["maxReceiveCount"]) == queue["max_receive_count"]
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {d.bucket("aws_replica"), d.bucket("aws_checkout")} <= buckets
    rules = s3.get_bucket_lifecycle_configuration(Bucket=d.bucket("aws_checkout"))["Rules"]
    assert rules[0]["Expiration"]["Days"] == 14
    tables = set(boto3.client("dynamodb").list_tables()["TableNames"])
    assert {t["name"] for t in d.tables.values()} <= tables
    secrets = boto3.client("secretsmanager")
    assert secrets.get_secret_value(SecretId=d.secrets["admin-emails"])["SecretString"] == "ops@example.org"
    assert {s["Name"] for s in secrets.list_secrets()["SecretList"]} >= set(d.secrets.values())
    parameter = boto3.client("ssm").get_parameter(Name=d.ssm_parameters["environment"])["Parameter"]["Value"]
    assert json.loads(parameter) == {**d.environment, "DSS_SEARCH_URL": "https://search.example"}
    sfn = boto3.client("stepfunctions")
    for workflow, arn in made["state_machines"].items():
        machine = sfn.describe_state_machine(stateMachineArn=arn)
        assert machine["name"] == d.state_machines[workflow]["name"]
        assert f":function:{d.task_function_prefix}" in machine["definition"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_policy_renders_as_json(stage: str) -> None:
    d = deploy.load(stage)
    rendered = policies.render_all(d, region="us-east-1", account="123456789012")
    assert set(rendered) >= set(d.lambdas) | {"states", "api-gateway"}
    for name, document in rendered.items():
        assert document["Version"] == "2012-10-17", name
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Action"], (name, statement)
            assert "${" not in json.dumps(statement), (name, statement)


def test_terraform_renders_the_policies_as_python_does(tmp_path: Path) -> None:
    """`templatefile()` in infra/aws and `dss.deploy.policies.render` give the same documents."""
    (tmp_path / "main.tf").write_text(RENDER_MODULE)
    d = deploy.load("dev")
    templates = sorted(p.stem for p in policies.TEMPLATES_DIR.glob("*.json"))
    values = policies.placeholders(d, "eu-west-1", "123456789012", "dss-dev-sync")
    outputs = deploy.evaluate(tmp_path, {"dir": str(policies.TEMPLATES_DIR), "templates": templates,
                                         "values": values})
    assert outputs["rendered"]["value"] == {t: policies.render(t, values) for t in templates}


RENDER_MODULE = """
variable "dir" { type = string }
variable "templates" { type = list(string) }
variable "values" { type = map(string) }
output "rendered" {
  value = { for t in var.templates : t => jsondecode(templatefile("${var.dir}/${t}.json", var.values)) }
}
"""


def test_policies_name_only_defined_resources() -> None:
    """Every named resource a policy grants on is one the definitions create (or a Lambda's log group)."""
    d = deploy.load("dev")
    names = {"sqs": {q[k] for q in d.queues.values() for k in ("name", "dead_letter_queue")},
             "sns": {d.topic, d.s3_events["topic"]},
             "s3": {b["name"] for b in d.buckets.values() if b["cloud"] == "aws"},
             "dynamodb": {t["name"] for t in d.tables.values()},
             "states": {m["name"] for m in d.state_machines.values()},
             "secretsmanager": set(d.secrets.values()), "es": {d.search["domain"]}}
    for name, document in policies.render_all(d, "us-east-1", "123456789012").items():
        for statement in document["Statement"]:
            resources = statement["Resource"]
            if resources == "*":
                assert "Star" in statement["Sid"], (name, statement)  # says why "*" is needed
                continue
            for arn in resources:
                assert _resource_name(arn) in names.get(arn.split(":")[2], {_resource_name(arn)}), (name, arn)


def _resource_name(arn: str) -> str:
    service, rest = arn.split(":")[2], arn.split(":", 5)[5]
    if service == "s3":
        return rest.split("/")[0]
    if service == "dynamodb":
        return rest.split("/")[1]
    if service == "states":
        return rest.split(":")[1]
    if service == "secretsmanager":
        return rest.removeprefix("secret:").removesuffix("-??????")
    if service == "es":
        return rest.split("/")[1]
    return rest


def test_queue_lambdas_consume_only_their_queue() -> None:
    d = deploy.load("dev")
    rendered = policies.render_all(d, "us-east-1", "123456789012")
    for handler, queue in d.queues.items():
        consume = [s for s in rendered[handler]["Statement"] if "sqs:ReceiveMessage" in s["Action"]]
        assert [s["Resource"] for s in consume] == [[f"arn:aws:sqs:us-east-1:123456789012:{queue['name']}"]]
        assert d.lambdas[handler]["trigger"]["queue"] == queue["name"]
        assert d.lambdas[handler]["timeout"] <= queue["visibility_timeout"]  # SQS refuses a shorter visibility


def test_provision_gcs_and_pubsub(aws_env: str, gcs_events_env: Any) -> None:
    """The gcp buckets and the relay's subscription come from the definitions; an object written to the
    replica bucket then reaches that subscription (fake-gcs-server publishes to the stage's topic)."""
    import time
    import uuid

    import requests
    from google.cloud import storage

    from tests.infra.gcs_events import STAGE

    unique = uuid.uuid4().hex[:12]
    d = deploy.load(STAGE, {"DSS_GCP_REPLICA_URL": f"gs://dss-defs-{unique}",
                            "DSS_GCP_CHECKOUT_URL": f"gs://dss-defs-{unique}-checkout"})
    assert d.pubsub["topic"] == gcs_events_env.topic
    client = storage.Client(project=gcs_events_env.project)
    made = deploy.provision_emulators(d, aws_env, storage=client, pubsub_host=gcs_events_env.pubsub_host,
                                      gcp_project=gcs_events_env.project)
    assert {d.bucket("gcp_replica"), d.bucket("gcp_checkout")} <= {b.name for b in client.list_buckets()}
    subscription = made["pubsub"]["subscription"]
    assert subscription.endswith("/subscriptions/" + d.pubsub["subscription"])

    client.bucket(d.bucket("gcp_replica")).blob("bundles/probe").upload_from_string(b"{}")
    deadline, seen = time.monotonic() + 120, []
    while time.monotonic() < deadline and ("bundles/probe", d.bucket("gcp_replica")) not in seen:
        reply = requests.post(f"http://{gcs_events_env.pubsub_host}/v1/{subscription}:pull",
                              json={"maxMessages": 50, "returnImmediately": True}, timeout=30).json()
        messages = reply.get("receivedMessages", [])
        seen += [(m["message"]["attributes"].get("objectId"), m["message"]["attributes"].get("bucketId"))
                 for m in messages]
        if messages:
            requests.post(f"http://{gcs_events_env.pubsub_host}/v1/{subscription}:acknowledge",
                          json={"ackIds": [m["ackId"] for m in messages]}, timeout=30)
        else:
            time.sleep(0.2)
    assert ("bundles/probe", d.bucket("gcp_replica")) in seen


def test_terraform_is_formatted() -> None:
    root = Path(__file__).resolve().parents[1] / "infra"
    done = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-list=true", str(root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"terraform fmt would change: {done.stdout}{done.stderr}"


def test_components_create_every_kind_of_definition() -> None:
    """Each output of infra/definitions (a kind of resource) is read by infra/aws or infra/gcp."""
    infra = Path(__file__).resolve().parents[1] / "infra"
    components = "".join(p.read_text() for c in ("aws", "gcp") for p in sorted((infra / c).glob("*.tf")))
    unread = [name for name in deploy.Definitions.__dataclass_fields__
              if name != "stage" and f"local.d.{name}" not in components]
    assert not unread
