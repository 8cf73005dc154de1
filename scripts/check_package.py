"""The offline checks of `make package`: what `scripts/package.py` built in `dist/<stage>/`, and `infra/`.

    scripts/check_package.py [--stage STAGE] [--dist DIR] [--only fmt,validate,...]

Each check prints what it looked at and every problem; the script exits 1 if any check failed.

- `fmt`: `terraform fmt -check -recursive infra`.
- `validate`: `terraform init -backend=false` + `validate` of every module under `infra/` that needs no
  provider (providers cannot be downloaded here), with a scratch data directory.
- `consistency`: what the code uses against `infra/definitions` and the IAM policies (see `consistency`).
- `checkov`: `checkov --skip-download` over `infra/` and the packaged Terraform; a failure not in the
  committed, justified baseline (`scripts/check_package_baseline.json`) fails.
- `parliament`: parliament's lint of every rendered policy; findings not in the baseline fail.
- `asl`: every state machine as deployed (its tasks bound to the stage's Lambda ARNs) through
  `asl-validator`.
- `imports`: each app imports, and its handlers exist, in a bare interpreter that sees only the app and
  its layer (as in Lambda).
- `sizes`: Lambda's limits: each zip ≤ 50 MB (direct upload), each function unzipped with its layer
  ≤ 250 MB.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dss.config import Config, ConfigError  # noqa: E402
from dss.deploy import definitions as defs  # noqa: E402
from dss.events import s3_events  # noqa: E402
from dss.events.sqs import parse_queue_url, resources  # noqa: E402
from dss.notify.dynamodb import TABLE as DELIVERIES_TABLE  # noqa: E402
from dss.ops import environment_parameter  # noqa: E402
from dss.secrets import SECRET_NAMES, secret_prefix  # noqa: E402
from dss.workflows import bind, default_registry, lambda_arns, task_names  # noqa: E402
from dss.workflows import definitions as workflow_definitions  # noqa: E402
from dss.workflows.stepfunctions import state_machine_name  # noqa: E402

INFRA = ROOT / "infra"
BASELINE = Path(__file__).resolve().with_name("check_package_baseline.json")
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
ASL_VALIDATOR = ROOT / ".node-tools" / "node_modules" / ".bin" / "asl-validator"
# Where policies are rendered for the checks: any region and account will do, the names are what matter.
REGION, ACCOUNT = "us-east-1", "123456789012"
MB = 1024 * 1024
ZIP_LIMIT = 50 * MB  # Lambda: a zip uploaded directly (function or layer)
UNZIPPED_LIMIT = 250 * MB  # Lambda: a function unzipped, with all its layers
# Set by scripts/deploy.py once the infrastructure exists (the OpenSearch endpoint is known only then).
DEPLOY_TIME_ENVIRONMENT = {"DSS_SEARCH_URL": "https://search-dss.us-east-1.es.amazonaws.com"}
TERRAFORM_TIMEOUT = 300


class CheckFailed(Exception):
    """A check found problems (the message lists them)."""


def _terraform_env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "TF_DATA_DIR": str(data_dir),
            "CHECKPOINT_DISABLE": "1"}


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


# --- terraform fmt / validate ---------------------------------------------------------------------------------
def check_fmt(infra: Path = INFRA) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        done = _run(["terraform", "fmt", "-check", "-recursive", "-diff", "-no-color", str(infra)],
                    env=_terraform_env(Path(scratch)), timeout=TERRAFORM_TIMEOUT)
    if done.returncode != 0:
        raise CheckFailed(f"terraform fmt would change these files (run `terraform fmt -recursive infra`):\n"
                          f"{done.stdout}{done.stderr}")
    return f"terraform fmt -check -recursive {_shown(infra)}: {len(list(infra.rglob('*.tf')))} files"


_NEEDS_PROVIDER = re.compile(r'^\s*(resource|data|provider)\s+"|required_providers|^\s*module\s+"', re.MULTILINE)


def provider_less_modules(infra: Path = INFRA) -> list[Path]:
    """Directories under `infra/` whose `.tf` files declare no resource, data source, provider or module."""
    folders = sorted({path.parent for path in infra.rglob("*.tf") if ".terraform" not in path.parts})
    return [folder for folder in folders
            if not any(_NEEDS_PROVIDER.search(tf.read_text()) for tf in folder.glob("*.tf"))]


def check_validate(infra: Path = INFRA) -> str:
    modules = provider_less_modules(infra)
    if not modules:
        raise CheckFailed(f"no provider-less module under {infra} (infra/definitions should be one)")
    problems = []
    for module in modules:
        with tempfile.TemporaryDirectory() as scratch:
            env = _terraform_env(Path(scratch))
            for command in (["init", "-backend=false", "-input=false", "-no-color"], ["validate", "-no-color"]):
                done = _run(["terraform", f"-chdir={module}", *command], env=env, timeout=TERRAFORM_TIMEOUT)
                if done.returncode != 0:
                    problems.append(f"{_shown(module)}: terraform {command[0]}: {done.stderr or done.stdout}")
                    break
    if problems:
        raise CheckFailed("\n".join(problems))
    return "terraform validate: " + ", ".join(_shown(m) for m in modules)


# --- what the code uses ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Uses:
    """Every resource name the code uses for one stage, each derived from the code itself."""
    topic: str
    sources: list[str]  # topics every handler queue takes unfiltered: the S3 events topic
    s3_events: dict[str, Any]  # the aws replica's notification: topic, event types (dss.events.s3_events)
    queues: dict[str, dict[str, Any]]  # by handler, as dss.events.sqs.resources() describes them
    tables: set[str]  # table names as the code opens them (without the dss-<stage>- prefix)
    state_machines: dict[str, str]  # workflow -> state machine name
    tasks: set[str]  # task names the workflow definitions run
    registry_tasks: set[str]  # task names the task registry implements
    secrets: set[str]
    ssm_parameters: set[str]
    variables: set[str]  # DSS_* variables dss/config.py reads
    lambdas: dict[str, dict[str, Any]]  # function name -> handler, trigger: what the packaged apps define


def _python_files(top: Path) -> Iterable[Path]:
    return (path for path in sorted(top.rglob("*.py")) if "deploy" not in path.relative_to(top).parts)


def table_names(package: Path = ROOT / "dss") -> set[str]:
    """Tables the code opens: string constants named `TABLE` / `*_TABLE` (the code's convention for a table
    name) and string literals given to a `tables(...)` call."""
    names = set()
    for path in _python_files(package):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                named = any(isinstance(t, ast.Name) and re.fullmatch(r"(\w+_)?TABLE", t.id) for t in node.targets)
                if named and isinstance(node.value.value, str):
                    names.add(node.value.value)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == "tables" and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)
    return names


def config_variables(config_py: Path = ROOT / "dss" / "config.py") -> set[str]:
    """Every `DSS_*` name that appears as a string in dss/config.py, the only reader of the environment."""
    return {node.value for node in ast.walk(ast.parse(config_py.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"DSS_[A-Z0-9_]+", node.value)}


def event_handlers(runtime_py: Path = ROOT / "dss" / "runtime.py") -> list[str]:
    """The handlers on the event bus: the module constant `HANDLERS = ("sync", …)` of dss/runtime.py, else the
    keys of the `self.handlers` dict that `Runtime` builds."""
    tree = ast.parse(runtime_py.read_text())
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.value, (ast.Tuple, ast.List)) and \
                any(isinstance(t, ast.Name) and t.id == "HANDLERS" for t in statement.targets):
            return [str(e.value) for e in statement.value.elts if isinstance(e, ast.Constant)]
    for node in ast.walk(tree):
        target: ast.expr
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign):
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Attribute) and target.attr == "handlers" and isinstance(value, ast.Dict):
            return [str(k.value) for k in value.keys if isinstance(k, ast.Constant)]
    raise CheckFailed(f"neither `HANDLERS = (...)` nor `self.handlers = {{...}}` in {runtime_py}")


def packaged_lambdas(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """Function name -> {app, handler, trigger: {type, queue, schedule}} from the packaged Chalice apps."""
    found: dict[str, dict[str, Any]] = {}
    for tf_path in sorted(stage_dir.glob("*/chalice.tf.json")):
        resources = json.loads(tf_path.read_text()).get("resource", {})
        by_reference = {}
        for resource_name, function in resources.get("aws_lambda_function", {}).items():
            by_reference[f"${{aws_lambda_function.{resource_name}.arn}}"] = function["function_name"]
            found[function["function_name"]] = {"app": tf_path.parent.name, "handler": function["handler"],
                                                "trigger": {"type": "stepfunctions", "queue": "", "schedule": ""}}
        if "aws_api_gateway_rest_api" in resources:
            for function in resources["aws_lambda_function"].values():
                found[function["function_name"]]["trigger"]["type"] = "api"
        for mapping in resources.get("aws_lambda_event_source_mapping", {}).values():
            found[by_reference[mapping["function_name"]]]["trigger"] = {
                "type": "sqs", "queue": mapping["event_source_arn"].rsplit(":", 1)[-1], "schedule": ""}
        rules = resources.get("aws_cloudwatch_event_rule", {})
        for target in resources.get("aws_cloudwatch_event_target", {}).values():
            rule = rules[target["rule"].split(".")[1]]
            found[by_reference[target["arn"]]]["trigger"] = {"type": "schedule", "queue": "",
                                                              "schedule": rule["schedule_expression"]}
    return found


def code_uses(stage: str, settings: Mapping[str, str], stage_dir: Path) -> Uses:
    bus = parse_queue_url(settings.get("DSS_QUEUE_URL") or "sns://", stage)
    described = resources(bus, event_handlers(), sources=[s3_events.topic_name(stage)])
    workflows = workflow_definitions.names()
    return Uses(
        topic=described["topic"], sources=described["sources"], queues=described["queues"], tables=table_names(),
        s3_events={"topic": s3_events.topic_name(stage), "events": list(s3_events.EVENT_TYPES)},
        state_machines={workflow: state_machine_name(stage, workflow) for workflow in workflows},
        tasks=set().union(*(task_names(workflow_definitions.load(w)) for w in workflows)),
        registry_tasks=set(default_registry().names()),
        secrets={secret_prefix("secretsmanager://", stage) + name for name in SECRET_NAMES},
        ssm_parameters={environment_parameter(stage)}, variables=config_variables(),
        lambdas=packaged_lambdas(stage_dir))


# --- policies -------------------------------------------------------------------------------------------------
def _statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    statements = document.get("Statement", [])
    return [statements] if isinstance(statements, dict) else list(statements)


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def grants(document: Mapping[str, Any], action: str, arn: str) -> bool:
    """Whether an Allow statement of `document` covers `action` on `arn` (IAM's `*`/`?` wildcards)."""
    for statement in _statements(document):
        if statement.get("Effect") != "Allow":
            continue
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(statement.get("Action"))) and \
                any(fnmatch.fnmatchcase(arn, r) for r in _listed(statement.get("Resource"))):
            return True
    return False


def _arn(service: str, resource: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}"


# Which kinds of resource each Lambda reaches, following its entry point (daemons/<name>/app.py ->
# dss/daemons.py): the one thing here not derived from the code's names. Every Lambda also reads the
# stage's secrets at its cold start (dss.secrets) and writes its own logs; an SQS-triggered one consumes
# the queue its packaged trigger names; Step Functions invokes every task Lambda a definition names.
REACHES = {
    "api": ("replica", "checkout", "publish", "intents", "tables", "workflows", "search"),  # every operation
    "sync": ("replica", "publish"),  # copies a key to the other replica and announces the copy
    "index": ("replica-read", "search", "deliveries"),  # indexes bundles, enqueues their notifications
    "journal": ("replica",),  # writes the events journal beside the replica's objects
    "notify": ("deliveries",),  # delivers the due notifications
    "gs-event-relay": ("publish",),  # GCS events (Pub/Sub) onto the bus
    "scheduled": ("replica", "publish", "search", "redrive"),  # compaction, reconcile, sweep, re-drive
    "task": ("replica", "checkout"),  # the copy and checkout tasks of the workflows
}


def _reach(kind: str, definitions: defs.Definitions, uses: Uses) -> list[tuple[str, str, str]]:
    prefix = f"dss-{definitions.stage}-"
    machines = sorted(uses.state_machines.values())
    domain = _arn("es", f"domain/{definitions.search['domain']}/x")
    bucket = {"replica": definitions.bucket("aws_replica"), "checkout": definitions.bucket("aws_checkout")}
    by_kind: dict[str, list[tuple[str, str]]] = {
        "replica": [(a, f"arn:aws:s3:::{bucket['replica']}/x") for a in ("s3:GetObject", "s3:PutObject")],
        "replica-read": [("s3:GetObject", f"arn:aws:s3:::{bucket['replica']}/x")],
        "checkout": [(a, f"arn:aws:s3:::{bucket['checkout']}/x") for a in ("s3:GetObject", "s3:PutObject")],
        "publish": [("sns:Publish", _arn("sns", uses.topic))],
        "intents": [("sqs:SendMessage", _arn("sqs", queue["name"])) for queue in uses.queues.values()],
        "tables": [(a, _arn("dynamodb", f"table/{prefix}{table}")) for table in sorted(uses.tables)
                   for a in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query")],
        "deliveries": [(a, _arn("dynamodb", f"table/{prefix}{DELIVERIES_TABLE}"))
                       for a in ("dynamodb:PutItem", "dynamodb:Query")],
        "workflows": [("states:StartExecution", _arn("states", f"stateMachine:{m}")) for m in machines]
        + [("states:DescribeExecution", _arn("states", f"execution:{m}:x")) for m in machines],
        "search": [(a, domain) for a in ("es:ESHttpGet", "es:ESHttpPost")],
        "redrive": [(a, _arn("sqs", queue["dead_letter_queue"])) for queue in uses.queues.values()
                    for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage")]
        + [("sqs:SendMessage", _arn("sqs", queue["name"])) for queue in uses.queues.values()],
    }
    return [(action, arn, kind) for action, arn in by_kind[kind]]


def needs(definitions: defs.Definitions, uses: Uses) -> dict[str, list[tuple[str, str, str]]]:
    """(action, ARN, why) that each policy must grant, by policy name (Lambda key, or `states`): every
    name from the code (`uses`) or the packaged apps' triggers, every kind of access from `REACHES`."""
    wanted: dict[str, list[tuple[str, str, str]]] = {}
    by_name = {fn["name"]: key for key, fn in definitions.lambdas.items()}
    secrets = [_arn("secretsmanager", f"secret:{name}-AbCdEf") for name in sorted(uses.secrets)]
    for name, packaged in uses.lambdas.items():
        key = by_name.get(name)
        if key is None:
            continue  # reported by the Lambda comparison
        need = wanted.setdefault(key, [])
        need += [("secretsmanager:GetSecretValue", arn, "secrets are read at cold start") for arn in secrets]
        need.append(("logs:PutLogEvents", _arn("logs", f"log-group:/aws/lambda/{name}:log-stream:x"), "own logs"))
        if packaged["trigger"]["type"] == "sqs":
            queue = _arn("sqs", packaged["trigger"]["queue"])
            need += [(action, queue, "its SQS trigger") for action in (
                "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility")]
        reach = REACHES.get("task" if definitions.lambdas[key]["kind"] == "task" else key)
        if reach is None:
            need.append(("-", "-", f"Lambda {key!r} is not in check_package.REACHES: say what it reaches"))
            continue
        for kind in reach:
            need += _reach(kind, definitions, uses)
    wanted["states"] = [("lambda:InvokeFunction", _arn("lambda", f"function:{definitions.task_function_prefix}{task}"),
                         "a state machine runs this task") for task in sorted(uses.tasks)]
    return wanted


_POLICY_RESOURCE = {  # ARN shape -> (kind, name) of what a policy grants on
    "dynamodb": re.compile(r"^table/([^/]+)"), "sqs": re.compile(r"^([^:]+)$"), "sns": re.compile(r"^([^:]+)$"),
    "states": re.compile(r"^(?:stateMachine|execution):([^:]+)"), "secretsmanager": re.compile(r"^secret:(.+)-\?{6}$"),
    "lambda": re.compile(r"^function:(.+)$"),
}


def granted_names(policies: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    """Resource names (patterns) each service's grants name, over all policies."""
    found: dict[str, set[str]] = {}
    for document in policies.values():
        for statement in _statements(document):
            for arn in _listed(statement.get("Resource")):
                parts = arn.split(":", 5)
                if len(parts) == 6 and parts[2] in _POLICY_RESOURCE:
                    match = _POLICY_RESOURCE[parts[2]].match(parts[5])
                    if match:
                        found.setdefault(parts[2], set()).add(match.group(1))
                elif arn.startswith("arn:aws:s3:::"):
                    found.setdefault("s3", set()).add(arn[len("arn:aws:s3:::"):].split("/", 1)[0])
    return found


# --- consistency -------------------------------------------------------------------------------------------------
def consistency_problems(definitions: defs.Definitions, uses: Uses, policies: Mapping[str, Mapping[str, Any]],
                         settings: Mapping[str, str]) -> list[str]:
    """Everything the code uses that the definitions or a policy lacks, and everything defined but unused."""
    problems: list[str] = []

    def compare(kind: str, used: Mapping[str, Any], defined: Mapping[str, Any]) -> None:
        for key in sorted(set(used) - set(defined)):
            problems.append(f"{kind} {key!r}: the code uses it ({used[key]}); infra/definitions lacks it")
        for key in sorted(set(defined) - set(used)):
            problems.append(f"{kind} {key!r}: defined in infra/definitions ({defined[key]}) but the code never uses it")
        for key in sorted(set(used) & set(defined)):
            if used[key] != defined[key]:
                problems.append(f"{kind} {key!r}: the code says {used[key]}, infra/definitions {defined[key]}")

    prefix = f"dss-{definitions.stage}-"
    if uses.topic != definitions.topic:
        problems.append(f"topic: the code publishes to {uses.topic!r}, infra/definitions defines {definitions.topic!r}")
    if uses.sources != definitions.bus_resources()["sources"]:
        problems.append(f"bus sources: the code subscribes the queues to {uses.sources}, "
                        f"infra/definitions to {definitions.bus_resources()['sources']}")
    s3_defined = {k: definitions.s3_events.get(k) for k in ("topic", "events")}
    if uses.s3_events != s3_defined:
        problems.append(f"S3 events: the code says {uses.s3_events}, infra/definitions {s3_defined}")
    if definitions.s3_events.get("bucket") != definitions.bucket("aws_replica"):
        problems.append(f"S3 events: the notifying bucket {definitions.s3_events.get('bucket')!r} is not the aws "
                        f"replica {definitions.bucket('aws_replica')!r}")
    queue_keys = ("name", "dead_letter_queue", "max_receive_count", "visibility_timeout")
    compare("queue", {h: {k: q[k] for k in queue_keys} for h, q in uses.queues.items()},
            {h: {k: q.get(k) for k in queue_keys} for h, q in definitions.queues.items()})
    compare("table", {t: prefix + t for t in uses.tables}, {t: v["name"] for t, v in definitions.tables.items()})
    compare("state machine", uses.state_machines, {w: v["name"] for w, v in definitions.state_machines.items()})
    for workflow, machine in definitions.state_machines.items():
        path = ROOT / machine["definition_file"]
        if not path.exists():
            problems.append(f"state machine {workflow!r}: definition file {machine['definition_file']} is missing")
        elif workflow in uses.state_machines and \
                set(machine["tasks"]) != task_names(workflow_definitions.load(workflow)):
            problems.append(f"state machine {workflow!r}: tasks {machine['tasks']} differ from its definition's")
    for task in sorted(uses.tasks - uses.registry_tasks):
        problems.append(f"task {task!r}: a workflow runs it but the task registry has no such task")
    compare("secret", {s: s for s in uses.secrets}, {s: s for s in definitions.secrets.values()})
    compare("SSM parameter", {p: p for p in uses.ssm_parameters}, {p: p for p in definitions.ssm_parameters.values()})
    # Lambdas: what the packaged apps define (their code) against the definitions.
    packaged = {name: {"handler": fn["handler"], **fn["trigger"]} for name, fn in uses.lambdas.items()}
    defined = {fn["name"]: {"handler": fn["handler"], "type": fn["trigger"]["type"], "queue": fn["trigger"]["queue"],
                            "schedule": fn["trigger"]["schedule"]} for fn in definitions.lambdas.values()}
    compare("Lambda", packaged, defined)
    task_lambdas = {definitions.task_function_prefix + task for task in uses.tasks}
    for name, fn in packaged.items():
        if fn["type"] == "stepfunctions" and name not in task_lambdas:
            problems.append(f"Lambda {name!r}: no state machine runs it")
        if fn["type"] == "sqs" and fn["queue"] not in {q["name"] for q in uses.queues.values()}:
            problems.append(f"Lambda {name!r}: its trigger queue {fn['queue']!r} is not a queue of the event bus")
    for name in sorted(task_lambdas - set(packaged)):
        problems.append(f"Lambda {name!r}: a state machine runs it but no app packages it")
    # Environment: every variable the deployment sets is read by the code, and with it the code uses the
    # cloud stores named in the definitions, not the embedded defaults.
    for variable in sorted(set(definitions.environment) - uses.variables):
        problems.append(f"environment variable {variable}: set by infra/definitions but dss/config.py never reads it")
    for variable in sorted(set(DEPLOY_TIME_ENVIRONMENT) - uses.variables):
        problems.append(f"environment variable {variable}: set at deploy but dss/config.py never reads it")
    problems += _environment_problems(definitions, settings)
    # Policies: every grant the code needs, and no grant on a resource that is not defined.
    for policy, wanted in needs(definitions, uses).items():
        document = policies.get(policy)
        if document is None:
            problems.append(f"policy {policy!r}: missing (iam/policy-templates)")
            continue
        for action, arn, why in wanted:
            if not grants(document, action, arn):
                problems.append(f"policy {policy!r} lacks {action} on {arn} ({why})")
    problems += _stale_grants(definitions, policies)
    return problems


def _environment_problems(definitions: defs.Definitions, settings: Mapping[str, str]) -> list[str]:
    environment = {**settings, **definitions.environment, **DEPLOY_TIME_ENVIRONMENT}
    try:
        config = Config.from_env(environment)
    except ConfigError as e:
        return [f"environment: the deployed DSS_* variables do not make a valid configuration: {e}"]
    problems = []
    local = {"queue (DSS_QUEUE_URL)": config.queue_url, "tables (DSS_TABLES_URL)": config.tables_url,
             "search (DSS_SEARCH_URL)": config.search_url}
    local.update({f"{r} replica": u for r, u in config.replica_urls.items()})
    local.update({f"{r} checkout store": u for r, u in config.checkout_urls.items()})
    for what, url in local.items():
        if url.startswith(("file:", "sqlite:")):
            problems.append(f"environment: a Lambda would use a local {what}: {url}")
    if not config.workflows_url:
        problems.append("environment: a Lambda would run workflows in-process (DSS_WORKFLOWS_URL is not set)")
    if not str(getattr(config, "secrets_url", "")).startswith("secretsmanager://"):
        problems.append("environment: a Lambda would keep its keys on local disk (DSS_SECRETS_URL is not set)")
    urls = (*config.replica_urls.values(), *config.checkout_urls.values())
    used = {url.split("://", 1)[1].split("/", 1)[0] for url in urls}
    defined = {b["name"] for b in definitions.buckets.values()}
    problems += [f"bucket {b!r}: the code uses it; infra/definitions lacks it" for b in sorted(used - defined)]
    problems += [f"bucket {b!r}: defined but the code never uses it" for b in sorted(defined - used)]
    return problems


def _stale_grants(definitions: defs.Definitions, policies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Grants that name a resource infra/definitions does not define (a rename or removal left behind)."""
    defined = {
        "dynamodb": {t["name"] for t in definitions.tables.values()},
        "sqs": {q[k] for q in definitions.queues.values() for k in ("name", "dead_letter_queue")},
        "sns": {definitions.topic, definitions.s3_events["topic"]},
        "states": {m["name"] for m in definitions.state_machines.values()},
        "secretsmanager": set(definitions.secrets.values()),
        "lambda": {fn["name"] for fn in definitions.lambdas.values()},
        "s3": {b["name"] for b in definitions.buckets.values() if b["cloud"] == "aws"},
    }
    problems = []
    for service, patterns in granted_names(policies).items():
        for pattern in sorted(patterns):
            if not any(fnmatch.fnmatchcase(name, pattern) for name in defined[service]):
                problems.append(f"policies grant {service} access to {pattern!r}, "
                                "which infra/definitions does not define")
    return problems


def load_policies(stage_dir: Path) -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((stage_dir / "policies").glob("*.json"))}


def check_consistency(stage_dir: Path, definitions: defs.Definitions | None = None,
                      policies: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    settings = json.loads((stage_dir / "settings.json").read_text()) if (stage_dir / "settings.json").exists() else {}
    definitions = definitions or defs.Definitions(**json.loads((stage_dir / "definitions.json").read_text()))
    policies = load_policies(stage_dir) if policies is None else policies
    uses = code_uses(definitions.stage, settings, stage_dir)
    problems = consistency_problems(definitions, uses, policies, settings)
    if problems:
        raise CheckFailed("\n".join(problems))
    return (f"code ↔ infra/definitions ↔ policies: topic, S3 events topic, {len(uses.queues)} queues + DLQs, "
            f"{len(uses.tables)} tables, "
            f"{len(uses.state_machines)} state machines, {len(uses.lambdas)} Lambdas, {len(uses.secrets)} secrets, "
            f"{len(uses.ssm_parameters)} SSM parameter, {len(definitions.environment)} environment variables, "
            f"{len(definitions.buckets)} buckets, {len(policies)} policies")


# --- checkov and parliament, with the baseline ----------------------------------------------------------------------
def baseline() -> dict[str, list[dict[str, str]]]:
    return json.loads(BASELINE.read_text())


def _allowed(entries: list[dict[str, str]], check: str, where: str) -> bool:
    return any(entry["id"] == check and fnmatch.fnmatchcase(where, entry["where"]) for entry in entries)


def _scannable_copy(stage_dir: Path, scratch: Path) -> Path:
    """The packaged Terraform without its `terraform {}` blocks, which checkov's JSON parser cannot read."""
    target = scratch / "dist"
    for path in stage_dir.rglob("*.tf.json"):
        document = json.loads(path.read_text())
        document.pop("terraform", None)
        copy = target / path.relative_to(stage_dir)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(json.dumps(document))
    return target


def check_checkov(stage_dir: Path, infra: Path = INFRA) -> str:
    if not CHECKOV.exists():
        raise CheckFailed(f"{CHECKOV} is missing: run `make .venv-checkov/.installed`")
    entries = baseline()["checkov"]
    failures, passed = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        scans = [(infra, "terraform", "infra"), (_scannable_copy(stage_dir, Path(scratch)), "terraform_json", "dist")]
        with concurrent.futures.ThreadPoolExecutor(len(scans)) as pool:  # two processes: about half the time
            runs = list(pool.map(lambda scan: _run(
                [str(CHECKOV), "-d", str(scan[0]), "--framework", scan[1], "--skip-download", "--quiet", "--compact",
                 "-o", "json"], timeout=600), scans))
        for (_directory, _framework, label), done in zip(scans, runs):
            try:
                reports = json.loads(done.stdout)
            except json.JSONDecodeError:
                raise CheckFailed(f"checkov over {label} gave no report:\n{done.stderr[-3000:]}") from None
            for report in reports if isinstance(reports, list) else [reports]:
                summary = report.get("summary", report)
                if summary.get("parsing_errors"):
                    errors = report.get("results", {}).get("parsing_errors", "")
                    raise CheckFailed(f"checkov could not parse some files under {label}: {errors}")
                passed += summary.get("passed", 0)
                for failure in report.get("results", {}).get("failed_checks", []):
                    where = f"{label}{failure['file_path']}:{failure['resource']}"
                    if not _allowed(entries, failure["check_id"], where):
                        failures.append(f"{failure['check_id']} {where}: {failure['check_name']}")
    if failures:
        raise CheckFailed("checkov failures (fix them, or add a justified entry to "
                          f"{BASELINE.relative_to(ROOT)}):\n" + "\n".join(sorted(set(failures))))
    return f"checkov --skip-download over infra/ and the packaged Terraform: {passed} passed, the rest baselined"


def check_parliament(stage_dir: Path) -> str:
    from parliament import analyze_policy_string

    entries = baseline()["parliament"]
    policies = load_policies(stage_dir)
    if not policies:
        raise CheckFailed(f"no rendered policies in {stage_dir / 'policies'}")
    problems = []
    for name, document in policies.items():
        for finding in analyze_policy_string(json.dumps(document)).findings:
            if not _allowed(entries, finding.issue, f"{name}:{json.dumps(finding.detail, sort_keys=True)}"):
                problems.append(f"{name}: {finding.issue} ({finding.severity}) {finding.title} {finding.detail}")
    if problems:
        raise CheckFailed("parliament findings (fix the template, or add a justified entry to "
                          f"{BASELINE.relative_to(ROOT)}):\n" + "\n".join(problems))
    return f"parliament: {len(policies)} rendered policies"


# --- ASL and sizes --------------------------------------------------------------------------------------------------
def check_asl(definitions: defs.Definitions) -> str:
    if not ASL_VALIDATOR.exists():
        raise CheckFailed(f"{ASL_VALIDATOR} is missing: run `make .node-tools/.installed`")
    resource_for = lambda_arns(REGION, ACCOUNT, definitions.task_function_prefix)
    with tempfile.TemporaryDirectory() as scratch:
        arguments = []
        for workflow in sorted(definitions.state_machines):
            path = Path(scratch) / f"{workflow}.json"
            path.write_text(json.dumps(bind(workflow_definitions.load(workflow), resource_for)))
            arguments += ["--json-path", str(path)]
        done = _run([str(ASL_VALIDATOR), *arguments], timeout=300)  # one node process for all of them
    valid = done.stdout.count("is valid")
    if done.returncode != 0 or valid != len(definitions.state_machines):
        raise CheckFailed(f"asl-validator refuses a state machine as deployed:\n{done.stdout}{done.stderr}")
    return f"asl-validator: {len(definitions.state_machines)} state machines with their tasks bound to Lambda ARNs"


def _unzipped(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist())


def check_sizes(stage_dir: Path) -> str:
    layer = stage_dir / "layer.zip"
    if not layer.exists():
        raise CheckFailed(f"{layer} is missing")
    layer_unzipped = _unzipped(layer)
    problems, lines = [], [f"layer {layer.stat().st_size / MB:.1f} MiB zipped, {layer_unzipped / MB:.1f} MiB unzipped"]
    if layer.stat().st_size > ZIP_LIMIT:
        problems.append(f"the layer is {layer.stat().st_size / MB:.1f} MiB zipped, over Lambda's 50 MB")
    for package in sorted(stage_dir.glob("*/deployment.zip")):
        zipped, unzipped = package.stat().st_size, _unzipped(package)
        total = (unzipped + layer_unzipped) / MB
        lines.append(f"{package.parent.name} {zipped / MB:.2f} MiB zipped, {total:.1f} MiB with the layer")
        if zipped > ZIP_LIMIT:
            problems.append(f"{package.parent.name}: {zipped / MB:.1f} MiB zipped, over Lambda's 50 MB")
        if unzipped + layer_unzipped > UNZIPPED_LIMIT:
            problems.append(f"{package.parent.name}: {total:.1f} MiB unzipped with the layer, "
                            "over Lambda's 250 MB")
    if problems:
        raise CheckFailed("\n".join(problems))
    return "sizes: " + "; ".join(lines)


# --- the packages import with nothing but their layer ---------------------------------------------------------------
_IMPORT_ALL = """
import importlib.util, json, sys
failures = []
for name, directory, handlers in json.loads(sys.argv[1]):
    sys.path.insert(0, directory)
    try:
        spec = importlib.util.spec_from_file_location("app_" + name.replace("-", "_"), directory + "/app.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        missing = [h for h in handlers if not callable(getattr(module, h.split(".", 1)[1], None))]
        failures += [name + ": no handler " + h for h in missing]
    except Exception as e:
        failures.append(name + ": " + type(e).__name__ + ": " + str(e))
    finally:
        sys.path.remove(directory)
print(json.dumps(failures))
"""


def check_imports(stage_dir: Path) -> str:
    """Each app, unzipped as Lambda would, imported by a bare interpreter (`-S -I`: no site-packages) that sees
    only the app and the unzipped layer, and each of its handlers found: a dependency missing from the
    layer, or a module missing from the package, fails here rather than in the cloud."""
    lambdas = packaged_lambdas(stage_dir)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with zipfile.ZipFile(stage_dir / "layer.zip") as archive:
            archive.extractall(work / "opt")
        apps = []
        for package in sorted(stage_dir.glob("*/deployment.zip")):
            with zipfile.ZipFile(package) as archive:
                archive.extractall(work / package.parent.name)
            handlers = sorted(fn["handler"] for fn in lambdas.values() if fn["app"] == package.parent.name)
            apps.append((package.parent.name, str(work / package.parent.name), handlers))
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(work / "opt" / "python"), "AWS_DEFAULT_REGION": REGION,
               "DSS_DEPLOYMENT_STAGE": stage_dir.name, "PYTHONDONTWRITEBYTECODE": "1", "HOME": scratch}
        done = _run([sys.executable, "-S", "-c", _IMPORT_ALL, json.dumps(apps)], env=env, cwd=scratch, timeout=300)
    if done.returncode != 0:
        raise CheckFailed(f"importing the apps failed:\n{done.stderr[-3000:]}")
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    if failures:
        raise CheckFailed("packaged apps that do not import with only their layer:\n" + "\n".join(failures))
    return f"{len(apps)} apps import with only their layer; {len(lambdas)} handlers found"


# --- the command ------------------------------------------------------------------------------------------------------
def stage_definitions(stage_dir: Path, infra: Path = INFRA) -> defs.Definitions:
    """The definitions the package was built with, or those of another copy of `infra/` (`--infra`)."""
    if infra.resolve() == INFRA.resolve():
        return defs.Definitions(**json.loads((stage_dir / "definitions.json").read_text()))
    settings = json.loads((stage_dir / "settings.json").read_text())
    values = {**defs.variables(stage_dir.name, settings), "definitions_dir": str(workflow_definitions.DEFINITIONS_DIR)}
    return defs.Definitions.from_outputs(defs.evaluate(infra / "definitions", values))


def checks(stage_dir: Path, infra: Path = INFRA) -> dict[str, Callable[[], str]]:
    definitions = stage_definitions(stage_dir, infra)
    return {
        "fmt": lambda: check_fmt(infra), "validate": lambda: check_validate(infra),
        "consistency": lambda: check_consistency(stage_dir, definitions),
        "checkov": lambda: check_checkov(stage_dir, infra), "parliament": lambda: check_parliament(stage_dir),
        "asl": lambda: check_asl(definitions), "sizes": lambda: check_sizes(stage_dir),
        "imports": lambda: check_imports(stage_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default=os.environ.get("DSS_DEPLOYMENT_STAGE") or "dev")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--only", default="", help="comma-separated checks (default: all)")
    parser.add_argument("--infra", type=Path, default=INFRA, help="check this copy of infra/ instead")
    arguments = parser.parse_args(argv)
    stage_dir = arguments.dist.resolve() / arguments.stage
    if not (stage_dir / "definitions.json").exists():
        print(f"check: {stage_dir} is not a package: run `make package` first", file=sys.stderr)
        return 1
    try:
        available = checks(stage_dir, arguments.infra.resolve())
    except defs.DefinitionsError as e:
        print(f"check: {e}", file=sys.stderr)
        return 1
    chosen = [c for c in arguments.only.split(",") if c] or list(available)
    failed = []
    for name in chosen:
        started = time.monotonic()
        try:
            summary = available[name]()
        except CheckFailed as e:
            failed.append(name)
            print(f"FAIL {name} ({time.monotonic() - started:.1f} s)\n{e}\n", flush=True)
        else:
            print(f"ok   {name} ({time.monotonic() - started:.1f} s): {summary}", flush=True)
    if failed:
        print(f"check_package: {len(failed)} of {len(chosen)} checks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
