"""`make package` and its offline checks, end to end: every Lambda packaged for a stage and every check
passing; the consistency check failing when a resource is removed from a copy of the Terraform, when a
policy lacks a grant, and when a resource is defined but unused; and the deploy targets stopping at once
without credentials (and `destroy` refusing a stage that is not a test stage).

Packaging runs in a network namespace without network where the machine allows it (`unshare -n`), to
show that it needs none."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
STAGE = "dev"  # environment.dev gives the settings, as an operator's stage file would
CHECKS = ["fmt", "validate", "consistency", "checkov", "parliament", "asl", "sizes", "imports"]

pytestmark = pytest.mark.timeout(600)


def _offline() -> list[str]:
    """`unshare -n` (no network at all) when this machine lets us use it, else nothing."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"]
    return []


def _run(*arguments: str | Path, offline: bool = False, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    command = [*(_offline() if offline else []), *map(str, arguments)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"})


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`scripts/package.py` for the stage, offline, into a scratch dist directory."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from package import layer_zip

    if not layer_zip().exists():
        pytest.fail(f"{layer_zip()} is missing: run `make lambda-layer` (make test does)")
    target = tmp_path_factory.mktemp("dist")
    done = _run(PYTHON, "scripts/package.py", "--stage", STAGE, "--dist", target, offline=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def _checks(dist: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(PYTHON, "scripts/check_package.py", "--stage", STAGE, "--dist", dist, *extra, offline=True)


def test_every_lambda_is_packaged_small_with_the_shared_layer(dist: Path) -> None:
    stage_dir = dist / STAGE
    definitions = json.loads((stage_dir / "definitions.json").read_text())
    functions = {}
    for tf_path in stage_dir.glob("*/chalice.tf.json"):
        tf = json.loads(tf_path.read_text())
        assert tf["terraform"]["required_version"] == ">= 1.5.0"  # not Chalice's < 1.4.0
        assert tf["terraform"]["required_providers"] == {"aws": {"source": "hashicorp/aws", "version": "~> 5.80"}}
        assert "null_data_source" not in tf.get("data", {})
        roles = tf["data"]["aws_iam_role"]
        for function in tf["resource"]["aws_lambda_function"].values():
            functions[function["function_name"]] = function
            role = re.fullmatch(r"\$\{data\.aws_iam_role\.([\w-]+)\.arn\}", function["role"])
            assert role and roles[role[1]] == {"name": function["function_name"]}  # infra/aws's role of that name
        for mapping in tf["resource"].get("aws_lambda_event_source_mapping", {}).values():
            assert mapping["function_response_types"] == ["ReportBatchItemFailures"]
        for rule in tf["resource"].get("aws_cloudwatch_event_rule", {}).values():
            assert rule["name"].startswith(f"dss-{STAGE}-")
        with zipfile.ZipFile(tf_path.parent / "deployment.zip") as archive:
            names = archive.namelist()
        assert "app.py" in names and "chalicelib/dss/runtime.py" in names and "chalicelib/dss-api.yml" in names
        assert not any(name.startswith(("boto3/", "botocore/", "connexion/")) for name in names)  # in the layer
    assert set(functions) == {fn["name"] for fn in definitions["lambdas"].values()}
    for fn in definitions["lambdas"].values():
        function = functions[fn["name"]]
        assert function["handler"] == fn["handler"]
        assert function["layers"] == ["${var.layer_arn}"]
        assert function["tracing_config"] == {"mode": "Active"}
        assert (function["timeout"], function["memory_size"]) == (fn["timeout"], fn["memory"])
    main = json.loads((stage_dir / "main.tf.json").read_text())
    assert main["resource"]["aws_lambda_layer_version"]["dependencies"]["layer_name"] == f"dss-{STAGE}-dependencies"
    assert main["data"]["aws_ssm_parameter"]["environment"]["name"] == f"/dss/{STAGE}/environment"
    assert (stage_dir / "layer.zip").stat().st_size > 1_000_000
    assert sorted(p.stem for p in (stage_dir / "policies").glob("*.json"))


def test_make_package_checks_pass_offline(dist: Path) -> None:
    done = _checks(dist)
    assert done.returncode == 0, done.stdout + done.stderr
    for check in CHECKS:
        assert re.search(rf"^ok   {check} \(", done.stdout, re.MULTILINE), done.stdout


def _copy_dist(dist: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dist"
    shutil.copytree(dist, copy, ignore=shutil.ignore_patterns("layer.zip", "deployment.zip"))
    return copy


def _copy_infra(tmp_path: Path, edit: str, replacement: str) -> Path:
    infra = tmp_path / "infra"
    shutil.copytree(ROOT / "infra", infra, ignore=shutil.ignore_patterns(".terraform*"))
    main = infra / "definitions" / "main.tf"
    text = main.read_text()
    assert re.search(edit, text), f"{edit!r} is not in infra/definitions/main.tf any more: update this test"
    main.write_text(re.sub(edit, replacement, text, count=1))
    return infra


def test_consistency_fails_when_a_table_is_removed_from_the_terraform(dist: Path, tmp_path: Path) -> None:
    infra = _copy_infra(tmp_path, r'"checkout",\s*', "")
    done = _checks(dist, "--only", "consistency", "--infra", infra)
    assert done.returncode == 1
    assert "FAIL consistency" in done.stdout
    assert "table 'checkout': the code uses it" in done.stdout and "infra/definitions lacks it" in done.stdout


def test_consistency_fails_when_a_queue_handler_is_removed_from_the_terraform(dist: Path, tmp_path: Path) -> None:
    infra = _copy_infra(tmp_path, r'handlers\s*=\s*\["sync", "index", "journal"\]', 'handlers = ["sync", "index"]')
    done = _checks(dist, "--only", "consistency", "--infra", infra)
    assert done.returncode == 1
    assert "queue 'journal': the code uses it" in done.stdout
    assert "Lambda 'dss-dev-journal'" in done.stdout  # the packaged journal daemon has no definition either


def test_consistency_fails_when_the_s3_events_topic_differs_from_the_code(dist: Path, tmp_path: Path) -> None:
    infra = _copy_infra(tmp_path, r'"dss-s3-events-\$\{var.stage\}"', '"dss-s3-notices-${var.stage}"')
    done = _checks(dist, "--only", "consistency", "--infra", infra)
    assert done.returncode == 1
    assert "S3 events: the code says {'topic': 'dss-s3-events-dev'" in done.stdout
    assert "bus sources: the code subscribes the queues to ['dss-s3-events-dev']" in done.stdout


def test_consistency_fails_when_a_resource_is_defined_but_unused(dist: Path, tmp_path: Path) -> None:
    infra = _copy_infra(tmp_path, r'"deliveries"\]', '"deliveries", "forgotten"]')
    done = _checks(dist, "--only", "consistency", "--infra", infra)
    assert done.returncode == 1
    assert "table 'forgotten': defined in infra/definitions" in done.stdout
    assert "but the code never uses it" in done.stdout


def test_consistency_fails_when_a_policy_lacks_a_grant(dist: Path, tmp_path: Path) -> None:
    copy = _copy_dist(dist, tmp_path)
    path = copy / STAGE / "policies" / "api.json"
    policy = json.loads(path.read_text())
    table = f":table/dss-{STAGE}-checkout"
    for statement in policy["Statement"]:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        statement["Resource"] = [r for r in resources if not r.endswith(table)] or ["arn:aws:s3:::nothing"]
    path.write_text(json.dumps(policy))
    done = _checks(copy, "--only", "consistency")
    assert done.returncode == 1
    assert f"policy 'api' lacks dynamodb:GetItem on arn:aws:dynamodb:us-east-1:123456789012{table}" in done.stdout


def test_consistency_fails_when_a_sqs_daemon_cannot_read_its_queue(dist: Path, tmp_path: Path) -> None:
    copy = _copy_dist(dist, tmp_path)
    path = copy / STAGE / "policies" / "index.json"
    policy = json.loads(path.read_text())
    policy["Statement"] = [s for s in policy["Statement"] if "sqs:ReceiveMessage" not in json.dumps(s)]
    path.write_text(json.dumps(policy))
    done = _checks(copy, "--only", "consistency")
    assert done.returncode == 1
    assert f"policy 'index' lacks sqs:ReceiveMessage on arn:aws:sqs:us-east-1:123456789012:dss-events-{STAGE}-index" \
        in done.stdout


def _without_credentials(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    return {**env, "HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.mark.parametrize("target", ["plan-infra", "deploy-infra", "deploy", "destroy"])
def test_deploy_targets_stop_at_once_without_credentials(target: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from package import layer_zip

    # -o: the set-up prerequisites count as made (this test is about the target, not about pip or npm)
    prerequisites = [".venv/.installed", ".venv-checkov/.installed", ".node-tools/.installed",
                     str(layer_zip().relative_to(ROOT))]
    done = _run("make", "--no-print-directory", "-s", *(f"-o{p}" for p in prerequisites), target, "STAGE=citest",
                env=_without_credentials(tmp_path), timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("deploy:")]
    assert len(lines) == 1, done.stderr
    assert "no AWS credentials" in lines[0]
    assert "+ " not in done.stderr  # nothing was run


def test_deploy_without_gcp_credentials_stops_too(tmp_path: Path) -> None:
    env = {**_without_credentials(tmp_path), "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}
    done = _run(PYTHON, "scripts/deploy.py", "deploy-infra", "--stage", "citest", env=env, timeout=120)
    assert done.returncode == 3
    assert done.stderr.strip().count("\n") == 0 and "GOOGLE_APPLICATION_CREDENTIALS" in done.stderr


@pytest.mark.parametrize("stage", ["prod", "staging", "dev"])
def test_destroy_refuses_a_stage_that_is_not_a_test_stage(stage: str, tmp_path: Path) -> None:
    done = _run(PYTHON, "scripts/deploy.py", "destroy", "--stage", stage, env=_without_credentials(tmp_path),
                timeout=120)
    assert done.returncode == 4
    assert f"refusing to destroy stage {stage!r}" in done.stderr and done.stderr.strip().count("\n") == 0


def _deploy_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    import deploy

    return deploy


def test_the_smoke_test_passes_against_a_real_server(aws_env: str, tmp_path: Path) -> None:
    """`make deploy`'s smoke test, run against a local server whose sources come from a bucket in moto: the
    same requests it sends to a deployed stage's API."""
    import boto3

    from tests.infra.dss_server import base_env, start_server

    deploy = _deploy_module()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="smoke-staging")
    (tmp_path / "staging").mkdir()
    server = start_server(base_env(tmp_path / "data", tmp_path / "staging"))
    try:
        passed = deploy.smoke_test(server.url, server.token(), "smoke-staging", s3)
    finally:
        server.stop()
        server.runtime.close()
    assert passed == ["GET /internal/health", "PUT + GET /v1/files (byte-identical)", "PUT + GET /v1/bundles",
                      "POST /v1/search finds the bundle"]
    assert s3.list_objects_v2(Bucket="smoke-staging").get("KeyCount") == 0  # the staged object is removed


def test_the_secrets_check_names_what_is_missing(aws_env: str) -> None:
    import boto3

    deploy = _deploy_module()
    client = boto3.client("secretsmanager")
    stage = "secretcheck"
    for name in ("url-signing-key", "service-accounts", "gcp-credentials.json", "admin-emails",
                 "application-secrets.json"):
        client.create_secret(Name=f"dss/{stage}/{name}", **({"SecretString": "x"} if name == "url-signing-key" else {}))
    client.create_secret(Name=f"dss/{stage}/token-issuer-key")  # created by Terraform, but never set
    with pytest.raises(deploy.DeployError, match=f"dss/{stage}/token-issuer-key"):
        deploy.check_secrets(stage)
    client.put_secret_value(SecretId=f"dss/{stage}/token-issuer-key", SecretString="pem")
    deploy.check_secrets(stage)


def test_the_lambda_environment_holds_what_the_code_reads() -> None:
    deploy = _deploy_module()
    settings = deploy.settings(STAGE)
    environment = deploy.lambda_environment(STAGE, settings, {"search_url": "https://search-dss-dev.example"})
    assert environment["DSS_SEARCH_URL"] == "https://search-dss-dev.example"
    assert environment["DSS_SECRETS_URL"] == f"secretsmanager://dss/{STAGE}/"
    assert environment["DSS_DATA_DIR"] == "/tmp/dss"
    assert environment["DSS_AWS_REPLICA_URL"] == settings["DSS_AWS_REPLICA_URL"]
    assert "DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE" not in environment  # a deployment setting, not the code's
    assert "DSS_STAGING_ROOTS" not in environment  # `environment` (a local server's defaults) is not read
