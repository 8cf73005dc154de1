"""`make plan-infra | deploy-infra | deploy | destroy` for one stage (`--stage`, default DSS_DEPLOYMENT_STAGE).

    plan-infra     terraform plan of infra/aws and infra/gcp (infra/run.sh: S3 backend, variables from the
                   stage's environment files)
    deploy-infra   terraform apply of both
    deploy         deploy-infra; write the Lambdas' environment (SSM /dss/<stage>/environment: the stage's
                   DSS_* settings the code reads, the deployment's own and DSS_SEARCH_URL); `make package`
                   and its checks; terraform apply of dist/<stage> (the layer and every Lambda, state
                   lambdas-<stage>.tfstate in the same S3 backend); map the custom domain onto the API;
                   `dss-ops lambda env update-deployed`; check the required secrets; smoke-test the stage
                   (/internal/health, a file and a bundle written and read back, a search)
    destroy        the Lambdas, then infra/gcp and infra/aws; only for a stage whose name says it is a test
                   stage (`test` in it, or ci, tmp, scratch with an optional number), or with --confirm-destroy=<stage>

Without AWS credentials (boto3's chain) or, for the GCP side, GOOGLE_APPLICATION_CREDENTIALS, every command
stops at once with one line on stderr and exit status 3.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
NO_CREDENTIALS = 3
REFUSED = 4
TEST_STAGE = re.compile(r"test|^(ci|tmp|scratch)[0-9]*$")  # names that say a stage is for tests
PROTECTED_STAGES = {"prod", "production", "staging"}
SMOKE_TIMEOUT = 120.0  # seconds the smoke test waits for an asynchronous answer


class DeployError(Exception):
    """A deployment step failed; the message says which and why."""


def fail(message: str, status: int = 1) -> None:
    print(f"deploy: {message}", file=sys.stderr)
    sys.exit(status)


# --- credentials and the stage's settings --------------------------------------------------------------------------
def aws_credentials_problem() -> str | None:
    """None if boto3's credential chain finds credentials (without calling AWS), else why not."""
    import botocore.session

    try:
        credentials = botocore.session.Session().get_credentials()
    except Exception as e:  # noqa: BLE001 - a broken profile is "no credentials" too, said in one line
        return f"no usable AWS credentials ({type(e).__name__}: {e})"
    if credentials is None:
        return ("no AWS credentials: configure boto3's chain (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "~/.aws, or an instance role) and AWS_DEFAULT_REGION")
    return None


def gcp_credentials_problem(environ: Mapping[str, str]) -> str | None:
    path = environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if not path:
        return "no GCP credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
    if not Path(path).is_file():
        return f"GOOGLE_APPLICATION_CREDENTIALS names {path!r}, which is not a file"
    return None


def destroy_refusal(stage: str, confirmation: str | None) -> str | None:
    if confirmation == stage:
        return None
    if stage in PROTECTED_STAGES or not TEST_STAGE.search(stage):
        return (f"refusing to destroy stage {stage!r}: its name does not say it is a test stage "
                f"(pass --confirm-destroy={stage} to override)")
    return None


def settings(stage: str) -> dict[str, str]:
    """The DSS_* settings of `environment.<stage>` (not `environment`: its defaults are a local server's)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from package import stage_settings

    return stage_settings(stage)


# --- steps ---------------------------------------------------------------------------------------------------------
def run(command: Sequence[str], env: Mapping[str, str] | None = None, capture: bool = False) -> str:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(list(command), cwd=ROOT, env=dict(env or os.environ), text=True,
                          stdout=subprocess.PIPE if capture else None, check=False)
    if done.returncode != 0:
        raise DeployError(f"{' '.join(command[:3])} … exited with status {done.returncode}")
    return done.stdout or ""


def infra(component: str, command: str, stage: str, *arguments: str, extra_env: Mapping[str, str] | None = None,
          capture: bool = False) -> str:
    env = {**os.environ, "DSS_DEPLOYMENT_STAGE": stage, "PYTHON": str(PYTHON), **(extra_env or {})}
    return run(["infra/run.sh", component, command, *arguments], env=env, capture=capture)


def infra_outputs(stage: str) -> dict[str, Any]:
    raw = infra("aws", "output", stage, "-json", capture=True)
    return {name: output["value"] for name, output in json.loads(raw or "{}").items()}


def state_bucket(stage: str, stage_settings: Mapping[str, str]) -> tuple[str, str]:
    """The Terraform state bucket (DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE, as infra/run.sh) and region."""
    import boto3

    region = os.environ.get("AWS_DEFAULT_REGION") or boto3.session.Session().region_name
    if not region:
        raise DeployError("set AWS_DEFAULT_REGION (the region of the stage)")
    account = boto3.client("sts").get_caller_identity()["Account"]
    template = stage_settings.get("DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE") or "dss-terraform-{account_id}"
    return template.replace("{account_id}", account).replace("{region}", region).replace("{stage}", stage), region


def lambdas(stage: str, stage_settings: Mapping[str, str], command: str, *arguments: str) -> str:
    """terraform `command` in dist/<stage> (the packaged Lambdas), state lambdas-<stage>.tfstate."""
    bucket, region = state_bucket(stage, stage_settings)
    directory = ROOT / "dist" / stage
    env = {**os.environ, "TF_DATA_DIR": str(directory / ".terraform"), "AWS_DEFAULT_REGION": region,
           "TF_IN_AUTOMATION": "1"}
    run(["terraform", f"-chdir={directory}", "init", "-input=false", "-reconfigure", f"-backend-config=bucket={bucket}",
         f"-backend-config=key=lambdas-{stage}.tfstate", f"-backend-config=region={region}",
         "-backend-config=encrypt=true"], env=env, capture=True)
    return run(["terraform", f"-chdir={directory}", command, *arguments], env=env,
               capture=command == "output")


def lambda_environment(stage: str, stage_settings: Mapping[str, str], outputs: Mapping[str, Any]) -> dict[str, str]:
    """What goes into SSM: the stage's settings that dss/config.py reads, the deployment's own variables
    (infra/definitions) and the search endpoint the infrastructure made."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from check_package import config_variables

    from dss.deploy.definitions import load

    definitions = load(stage, stage_settings)
    read = config_variables()
    environment = {name: value for name, value in stage_settings.items() if name in read}
    environment.update(definitions.environment)
    if outputs.get("search_url"):
        environment["DSS_SEARCH_URL"] = outputs["search_url"]
    return environment


def dss_ops(stage: str, environment: Mapping[str, str], *arguments: str, capture: bool = False) -> str:
    env = {**os.environ, **environment, "DSS_DEPLOYMENT_STAGE": stage}
    return run([str(PYTHON), "scripts/dss-ops.py", *arguments], env=env, capture=capture)


def check_secrets(stage: str) -> None:
    """The required secrets have values; the optional ones exist (infra/aws creates them empty)."""
    import boto3

    from dss.secrets import REQUIRED, SECRET_NAMES

    client = boto3.client("secretsmanager")
    missing = []
    for name in SECRET_NAMES:
        secret = f"dss/{stage}/{name}"
        try:
            if name in REQUIRED:
                client.get_secret_value(SecretId=secret)
            else:
                client.describe_secret(SecretId=secret)
        except client.exceptions.ResourceNotFoundException:
            missing.append(secret)
    if missing:
        raise DeployError(f"secrets without a value: {', '.join(missing)} (scripts/dss-ops.py secrets init | set NAME)")
    print(f"secrets: the {len(SECRET_NAMES)} secrets of dss/{stage}/ are there", file=sys.stderr)


# --- the smoke test ---------------------------------------------------------------------------------------------------
def smoke_test(api_url: str, token: str, staging_bucket: str, s3: Any) -> list[str]:
    """/internal/health, then a file staged in `staging_bucket` put, a bundle of it put, both read back, and a
    search that finds the bundle. Returns what passed; raises DeployError on the first failure."""
    import requests

    from dss.checksums import checksum_stream

    base, passed = api_url.rstrip("/"), []
    auth = {"Authorization": f"Bearer {token}"}

    def expect(response: requests.Response, *statuses: int) -> requests.Response:
        if response.status_code not in statuses:
            raise DeployError(f"smoke test: {response.request.method} {response.url} answered {response.status_code}: "
                              f"{response.text[:500]}")
        return response

    expect(requests.get(f"{base}/internal/health", timeout=30), 200)
    passed.append("GET /internal/health")
    body = f"dss smoke test {uuid.uuid4()}\n".encode()
    sums = checksum_stream(io.BytesIO(body), len(body)).as_dict()
    key = f"dss-smoke-test/{uuid.uuid4()}.json"
    s3.put_object(Bucket=staging_bucket, Key=key, Body=body, ContentType="application/json",
                  Metadata={f"hca-dss-{name}": value for name, value in sums.items()})
    try:
        file_uuid, bundle_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        version = time.strftime("%Y-%m-%dT%H%M%S.000000Z", time.gmtime())
        put = {"bundle_uuid": bundle_uuid, "creator_uid": 0, "source_url": f"s3://{staging_bucket}/{key}"}
        response = expect(requests.put(f"{base}/v1/files/{file_uuid}", params={"version": version}, json=put,
                                       headers=auth, timeout=60), 200, 201, 202)
        deadline = time.monotonic() + SMOKE_TIMEOUT
        while response.status_code != 200:  # 202: the copy runs as a workflow; HEAD says 200 once it is done
            if time.monotonic() > deadline:
                raise DeployError(f"smoke test: file {file_uuid} was not copied within {SMOKE_TIMEOUT:.0f} s")
            time.sleep(2)
            response = requests.head(f"{base}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                                     timeout=30)
        got = expect(requests.get(f"{base}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                                  allow_redirects=True, timeout=60), 200)
        if got.content != body:
            raise DeployError("smoke test: the file read back differs from the one written")
        passed.append("PUT + GET /v1/files (byte-identical)")
        files = [{"uuid": file_uuid, "version": version, "name": "smoke.json", "indexed": True}]
        expect(requests.put(f"{base}/v1/bundles/{bundle_uuid}", params={"version": version, "replica": "aws"},
                            json={"files": files, "creator_uid": 0}, headers=auth, timeout=60), 200, 201)
        bundle = expect(requests.get(f"{base}/v1/bundles/{bundle_uuid}", params={"replica": "aws"}, timeout=60), 200)
        if [f["uuid"] for f in bundle.json()["bundle"]["files"]] != [file_uuid]:
            raise DeployError("smoke test: the bundle read back does not list its file")
        passed.append("PUT + GET /v1/bundles")
        query = {"es_query": {"query": {"term": {"uuid": bundle_uuid}}}}
        while True:  # indexing is asynchronous (the index daemon)
            found = expect(requests.post(f"{base}/v1/search", params={"replica": "aws"}, json=query, timeout=60), 200)
            if any(bundle_uuid in result.get("bundle_fqid", "") for result in found.json().get("results", [])):
                break
            if time.monotonic() > deadline:
                raise DeployError(f"smoke test: no search found bundle {bundle_uuid} within {SMOKE_TIMEOUT:.0f} s")
            time.sleep(3)
        passed.append("POST /v1/search finds the bundle")
    finally:
        s3.delete_object(Bucket=staging_bucket, Key=key)
    return passed


# --- the commands -----------------------------------------------------------------------------------------------
def deploy(stage: str) -> None:
    import boto3

    stage_settings = settings(stage)
    infra("aws", "apply", stage, "-input=false", "-auto-approve")
    infra("gcp", "apply", stage, "-input=false", "-auto-approve")
    outputs = infra_outputs(stage)
    environment = lambda_environment(stage, stage_settings, outputs)
    dss_ops(stage, environment, "lambda", "env", "set", *(f"{k}={v}" for k, v in sorted(environment.items())))
    run([str(PYTHON), "scripts/package.py", "--stage", stage])
    run([str(PYTHON), "scripts/check_package.py", "--stage", stage])
    lambdas(stage, stage_settings, "apply", "-input=false", "-auto-approve")
    deployed = json.loads(lambdas(stage, stage_settings, "output", "-json"))
    api_url = deployed.get("api_url", {}).get("value", "")
    rest_api = re.search(r"https://([a-z0-9]+)\.execute-api\.", api_url)
    if stage_settings.get("DSS_API_URL") and rest_api:  # its host is the custom domain: map it onto the API
        infra("aws", "apply", stage, "-input=false", "-auto-approve", extra_env={"TF_VAR_api_rest_api_id": rest_api[1]})
    if "DSS_API_URL" not in environment and api_url:
        environment["DSS_API_URL"] = api_url.rstrip("/")
        dss_ops(stage, environment, "lambda", "env", "set", f"DSS_API_URL={environment['DSS_API_URL']}")
    dss_ops(stage, environment, "lambda", "env", "update-deployed")
    check_secrets(stage)
    token = dss_ops(stage, environment, "token", "--email", f"dss-smoke-test@{stage}.invalid", "--group", "hca",
                    capture=True).strip()
    bucket = str(environment["DSS_AWS_CHECKOUT_URL"]).split("://", 1)[1].strip("/")
    # Through API Gateway's own URL: a new custom domain's DNS record may take a while to be seen.
    for step in smoke_test(api_url or environment["DSS_API_URL"], token, bucket, boto3.client("s3")):
        print(f"smoke test: {step}", file=sys.stderr)
    print(f"Stage {stage} deployed: {environment.get('DSS_API_URL') or api_url}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=["plan-infra", "deploy-infra", "deploy", "destroy"])
    parser.add_argument("--stage", default=os.environ.get("DSS_DEPLOYMENT_STAGE") or "dev")
    parser.add_argument("--confirm-destroy", metavar="STAGE", help="destroy a stage whose name is not a test stage's")
    arguments = parser.parse_args(argv)
    stage = arguments.stage
    if arguments.command == "destroy":
        refusal = destroy_refusal(stage, arguments.confirm_destroy)
        if refusal:
            fail(refusal, REFUSED)
    problem = aws_credentials_problem() or gcp_credentials_problem(os.environ)
    if problem:
        fail(f"{arguments.command} {stage}: {problem}", NO_CREDENTIALS)
    sys.path.insert(0, str(ROOT))
    try:
        if arguments.command == "plan-infra":
            infra("aws", "plan", stage, "-input=false")
            infra("gcp", "plan", stage, "-input=false")
        elif arguments.command == "deploy-infra":
            infra("aws", "apply", stage, "-input=false", "-auto-approve")
            infra("gcp", "apply", stage, "-input=false", "-auto-approve")
        elif arguments.command == "deploy":
            deploy(stage)
        else:
            if (ROOT / "dist" / stage / "main.tf.json").exists():
                lambdas(stage, settings(stage), "destroy", "-input=false", "-auto-approve")
            infra("gcp", "destroy", stage, "-input=false", "-auto-approve")
            infra("aws", "destroy", stage, "-input=false", "-auto-approve")
    except DeployError as e:
        fail(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
