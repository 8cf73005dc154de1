"""`make package`: every Lambda artifact of a stage in Terraform form, built offline.

    scripts/package.py layer                 # during setup (needs the network): the dependency layer
    scripts/package.py [--stage STAGE]       # offline: dist/<stage>/

The Lambdas and what they run are read from `infra/definitions` (`dss.deploy.definitions`): each
`source` directory (`chalice` for the API, `daemons/<name>`) is one Chalice app. Each app is packaged
with `chalice package --pkg-format terraform` in a scratch copy that carries `dss/` and `dss-api.yml` in
`chalicelib/`, with no `requirements.txt`: the runtime dependencies live in one shared Lambda layer,
built once from `requirements.txt` for Lambda (manylinux x86_64, CPython 3.11) and cached under
`.lambda-layer/<hash of requirements.txt>/`, so the per-app packages hold only our code and packaging
needs no network.

Chalice's Terraform is then post-processed into one Terraform root per stage, `dist/<stage>/`:

- `main.tf.json`: the dependency layer, the Lambdas' environment (the deployment's `DSS_*` variables
  from the definitions, overridden by the SSM parameter `/dss/<stage>/environment` that
  `dss-ops lambda env update-deployed` maintains), and one module per app;
- `<app>/chalice.tf.json` + `<app>/deployment.zip`: Chalice's output with a current Terraform core and
  aws provider (Chalice pins `< 1.4.0` and `< 5`), the null provider dropped, each function named, sized,
  timed and limited as the definitions say (the API is `dss-<stage>-api`, not Chalice's `dss-<stage>`),
  given the layer, X-Ray tracing and the IAM role of the same name that `infra/aws` creates from
  `iam/policy-templates/` (Chalice's own policy generation is off: see `ROLE` below), and SQS triggers
  that report partial batch failures;
- `policies/<lambda>.json`: the rendered IAM policies (`dss.deploy.policies`), for the checks;
- `definitions.tfvars.json` and `definitions.json`: the stage's variables of `infra/definitions` and
  what they evaluate to; `settings.json`: the `DSS_*` settings of `environment.<stage>` used;
- `layer.zip`: the dependency layer (a hard link to the cached one).

`scripts/check_package.py` checks the result; `scripts/deploy.py` applies it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dss.deploy import definitions as defs  # noqa: E402

logger = logging.getLogger("package")

LAYER_ROOT = ROOT / ".lambda-layer"
LOCK_FILE = ROOT / "requirements.txt"
CHALICE = ROOT / ".venv" / "bin" / "chalice"
# Not needed in a Lambda: Chalice's command line (Chalice packages its small runtime module into every
# app itself) and uvicorn's optional speed-ups for serving HTTP on a machine. Keeps the layer well under
# Lambda's 50 MB direct-upload limit.
LAYER_EXCLUDE = {"chalice", "inquirer", "blessed", "readchar", "editor", "runs", "xmod", "jinxed", "wcwidth",
                 "uvloop", "httptools", "watchfiles", "websockets"}
PLATFORM = ["--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11",
            "--abi", "cp311", "--only-binary=:all:"]
# The Terraform core and aws provider the generated Terraform asks for (the same as infra/aws).
TERRAFORM_VERSION = ">= 1.5.0"
AWS_PROVIDER = {"source": "hashicorp/aws", "version": "~> 5.80"}
RUNTIME = "python3.11"
# IAM: Chalice does not manage the roles (`manage_iam_role: false`). Each Lambda runs as the role of its
# own name that infra/aws creates with the policy rendered from iam/policy-templates/<lambda>.json: one
# least-privilege policy per Lambda, in one place, reviewed and linted, instead of Chalice's generated
# policy (which cannot see what boto3 calls our code makes, and crashes on this code base anyway).
ROLE = "${data.aws_iam_role.%s.arn}"
POLICY_REGION, POLICY_ACCOUNT = "us-east-1", "123456789012"
DEFAULT_CHALICE_CONFIG = {"version": "2.0", "app_name": "dss", "manage_iam_role": False,
                          "iam_role_arn": "set-by-scripts/package.py", "xray": True, "stages": {}}
SCRATCH_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".chalice", ".mypy_cache")


class PackageError(Exception):
    """Packaging failed; the message says why and what to do."""


# --- the dependency layer (setup time, with network) -------------------------------------------------------
def layer_zip() -> Path:
    """Where the layer for the current `requirements.txt` is cached."""
    digest = hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16]
    return LAYER_ROOT / digest / "layer.zip"


def build_layer(force: bool = False) -> Path:
    """Install the locked runtime requirements for Lambda into `python/` and zip it (idempotent)."""
    target = layer_zip()
    if target.exists() and not force:
        return target
    wanted = [line for line in LOCK_FILE.read_text().splitlines()
              if line.strip() and not line.startswith("#")
              and line.split("==")[0].strip().lower() not in LAYER_EXCLUDE]
    with tempfile.TemporaryDirectory(prefix="dss-layer-") as scratch:
        work = Path(scratch)
        (work / "requirements.txt").write_text("\n".join(wanted) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                        str(work / "python"), *PLATFORM, "-r", str(work / "requirements.txt")], check=True)
        for cache in list((work / "python").rglob("__pycache__")):
            shutil.rmtree(cache)  # compiled for this machine's interpreter; Lambda compiles its own
        partial = target.with_suffix(".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        _zip_tree(work, "python", partial)
        partial.replace(target)
    for old in LAYER_ROOT.iterdir():
        if old != target.parent:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("Built the dependency layer %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


def _zip_tree(base: Path, top: str, destination: Path) -> None:
    """A reproducible zip of `base/top` (sorted entries, fixed timestamps)."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted((base / top).rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(base)), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())


# --- settings and definitions -------------------------------------------------------------------------------
def stage_settings(stage: str) -> dict[str, str]:
    """The `DSS_*` settings of `environment.<stage>` (sourced by bash in an empty environment; none when the
    stage has no file)."""
    path = ROOT / f"environment.{stage}"
    if not path.exists():
        return {}
    done = subprocess.run(["bash", "-c", 'set -a; . "$1" >/dev/null; env -0', "bash", str(path)],
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=True, timeout=60)
    pairs = (entry.split("=", 1) for entry in done.stdout.decode().split("\0") if "=" in entry)
    return {name: value for name, value in pairs if name.startswith("DSS_")}


def app_sources(definitions: defs.Definitions) -> dict[str, Path]:
    """Module name -> Chalice project directory, one per distinct Lambda `source` (`chalice` is `api`)."""
    sources = {str(fn["source"]) for fn in definitions.lambdas.values()}
    return {("api" if source == "chalice" else Path(source).name): ROOT / source for source in sorted(sources)}


# --- packaging -------------------------------------------------------------------------------------------------
def chalice_package(name: str, source: Path, stage: str, environment: Mapping[str, str], work: Path) -> Path:
    """`chalice package --pkg-format terraform` of one app in a scratch project; returns its output dir."""
    if not CHALICE.exists():
        raise PackageError(f"{CHALICE} is missing: run `make .venv/.installed`")
    project = work / "projects" / name
    shutil.copytree(source, project, ignore=SCRATCH_IGNORE)
    if (source / ".chalice" / "config.json").exists():
        shutil.copytree(source / ".chalice", project / ".chalice", ignore=shutil.ignore_patterns("deployments"))
    else:  # a new daemon without its own Chalice configuration gets the daemons' usual one
        (project / ".chalice").mkdir()
        (project / ".chalice" / "config.json").write_text(json.dumps(DEFAULT_CHALICE_CONFIG, indent=2))
    (project / "requirements.txt").unlink(missing_ok=True)  # the dependencies are in the layer
    shutil.copytree(ROOT / "dss", project / "chalicelib" / "dss", ignore=SCRATCH_IGNORE)
    shutil.copy(ROOT / "dss-api.yml", project / "chalicelib" / "dss-api.yml")
    out = work / "out" / name
    # The app is imported with the deployment's environment, so that names it reads at import time (the
    # queue of an SQS trigger) are the deployed ones. No credentials: packaging talks to no cloud.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "AWS_DEFAULT_REGION": "us-east-1",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", **environment}
    done = subprocess.run([str(CHALICE), "package", "--pkg-format", "terraform", "--stage", stage, str(out)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0 or not (out / "chalice.tf.json").exists():
        raise PackageError(f"chalice package of {source.relative_to(ROOT)} failed:\n{done.stdout}{done.stderr}")
    return out


def post_process(tf: dict[str, Any], stage: str, definitions: defs.Definitions) -> dict[str, Any]:
    """Chalice's Terraform made deployable next to infra/ (see the module docstring)."""
    by_name = {str(fn["name"]): (key, fn) for key, fn in definitions.lambdas.items()}
    tf["terraform"] = {"required_version": TERRAFORM_VERSION, "required_providers": {"aws": AWS_PROVIDER}}
    data = tf.setdefault("data", {})
    data.pop("null_data_source", None)  # Chalice's only use of the null provider; nothing reads it
    resources = tf.setdefault("resource", {})
    roles: dict[str, Any] = {}
    for resource_name, function in resources.get("aws_lambda_function", {}).items():
        name = function["function_name"]
        if name == f"dss-{stage}":  # Chalice names the API handler after the app alone
            name = function["function_name"] = f"dss-{stage}-api"
        if name not in by_name:
            raise PackageError(f"Chalice made a Lambda {name!r} that infra/definitions does not define")
        key, fn = by_name[name]
        role = f"role_{resource_name}"
        roles[role] = {"name": str(fn.get("role") or name)}
        function.update({
            "role": ROLE % role, "runtime": RUNTIME,
            "timeout": int(fn["timeout"]), "memory_size": int(fn["memory"]),
            "layers": ["${var.layer_arn}"], "tracing_config": {"mode": "Active"},
            "environment": {"variables": "${var.environment}"},
            "tags": {**function.get("tags", {}), "dss-stage": stage, "dss-lambda": key},
        })
        if int(fn.get("reserved_concurrency", -1)) >= 0:
            function["reserved_concurrent_executions"] = int(fn["reserved_concurrency"])
    data["aws_iam_role"] = roles
    for mapping in resources.get("aws_lambda_event_source_mapping", {}).values():
        mapping["function_response_types"] = ["ReportBatchItemFailures"]  # SQSEventBus.handle's replies
    for rule in resources.get("aws_cloudwatch_event_rule", {}).values():
        rule["name"] = f"dss-{stage}-{rule['name']}"  # Chalice's `<function>-event` is not unique per stage
    for api in resources.get("aws_api_gateway_rest_api", {}).values():
        api["name"] = f"dss-{stage}-api"
        api["lifecycle"] = {"create_before_destroy": True}  # a new API is up before the old one goes
    tf["variable"] = {
        "layer_arn": {"type": "string", "description": "ARN of the dependency layer version"},
        "environment": {"type": "map(string)", "description": "The Lambdas' environment (DSS_* variables)"},
    }
    tf.setdefault("output", {})["functions"] = {"value": {
        name: f"${{aws_lambda_function.{resource_name}.arn}}"
        for resource_name, name in ((r, f["function_name"]) for r, f in resources["aws_lambda_function"].items())}}
    return tf


def root_module(stage: str, definitions: defs.Definitions, apps: list[str]) -> dict[str, Any]:
    """The stage's Terraform root: the layer, the environment, one module per app."""
    parameter = definitions.ssm_parameters["environment"]
    modules = {app: {"source": f"./{app}", "layer_arn": "${aws_lambda_layer_version.dependencies.arn}",
                     "environment": "${local.environment}"} for app in apps}
    merged = ", ".join(f"module.{app}.functions" for app in apps)
    outputs: dict[str, Any] = {"functions": {"value": f"${{merge({merged})}}"}}
    if "api" in apps:
        outputs["api_url"] = {"value": "${module.api.EndpointURL}"}
    return {
        # State in the S3 backend of infra/ (scripts/deploy.py gives bucket and key: lambdas-<stage>.tfstate).
        "terraform": {"required_version": TERRAFORM_VERSION, "required_providers": {"aws": AWS_PROVIDER},
                      "backend": {"s3": {}}},
        # Region and credentials from the environment (scripts/deploy.py sets AWS_DEFAULT_REGION), as infra/aws.
        "provider": {"aws": {"default_tags": {"tags": {"service": "dss", "stage": stage}}}},
        "resource": {"aws_lambda_layer_version": {"dependencies": {
            "layer_name": f"dss-{stage}-dependencies", "filename": "${path.module}/layer.zip",
            "source_code_hash": '${filebase64sha256("${path.module}/layer.zip")}',
            "compatible_runtimes": [RUNTIME], "compatible_architectures": ["x86_64"]}}},
        "data": {"aws_ssm_parameter": {"environment": {"name": parameter}}},
        # The parameter holds no secrets (those are in Secrets Manager), so plans may show it.
        "locals": {"deployment_environment": definitions.environment,
                   "environment": "${merge(local.deployment_environment, "
                                  "jsondecode(nonsensitive(data.aws_ssm_parameter.environment.value)))}"},
        "module": modules,
        "output": outputs,
    }


def render_policies(definitions: defs.Definitions, out: Path) -> list[Path]:
    """Every IAM policy of iam/policy-templates rendered for the stage (dss.deploy.policies), for the checks:
    any region and account will do (Terraform renders the deployed ones with the real ones)."""
    from dss.deploy import policies

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in policies.render_all(definitions, POLICY_REGION, POLICY_ACCOUNT).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def package(stage: str, dist: Path, jobs: int | None = None) -> Path:
    """Build dist/<stage>/ (see the module docstring). Offline; needs the layer (`package.py layer`)."""
    started = time.monotonic()
    layer = layer_zip()
    if not layer.exists():
        raise PackageError(f"the dependency layer {layer.relative_to(ROOT)} is missing: run "
                           "`make lambda-layer` once with network (make package and make test do)")
    settings = stage_settings(stage)
    definitions = defs.load(stage, settings)
    sources = app_sources(definitions)
    environment = {**settings, **definitions.environment}
    target = dist / stage
    with tempfile.TemporaryDirectory(prefix=f"dss-package-{stage}-") as scratch:
        work = Path(scratch)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or min(len(sources), os.cpu_count() or 2)) as pool:
            futures = {name: pool.submit(chalice_package, name, source, stage, environment, work)
                       for name, source in sources.items()}
            outputs = {name: future.result() for name, future in futures.items()}
        staged = work / "dist"
        staged.mkdir()
        for name, out in outputs.items():
            tf = post_process(json.loads((out / "chalice.tf.json").read_text()), stage, definitions)
            (staged / name).mkdir()
            (staged / name / "chalice.tf.json").write_text(json.dumps(tf, indent=2) + "\n")
            shutil.move(str(out / "deployment.zip"), staged / name / "deployment.zip")
        root = root_module(stage, definitions, sorted(outputs))
        (staged / "main.tf.json").write_text(json.dumps(root, indent=2) + "\n")
        try:
            os.link(layer, staged / "layer.zip")
        except OSError:
            shutil.copy(layer, staged / "layer.zip")
        render_policies(definitions, staged / "policies")
        (staged / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        (staged / "definitions.tfvars.json").write_text(json.dumps(defs.variables(stage, settings), indent=2) + "\n")
        (staged / "definitions.json").write_text(json.dumps(
            {name: getattr(definitions, name) for name in defs.Definitions.__dataclass_fields__}, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), target)
    logger.info("Packaged %d apps (%d Lambdas) for stage %s into %s in %.1f s", len(outputs),
                len(definitions.lambdas), stage, target, time.monotonic() - started)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["package", "layer"], default="package")
    parser.add_argument("--stage", default=os.environ.get("DSS_DEPLOYMENT_STAGE") or "dev")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--jobs", type=int, default=None, help="apps packaged at once (default: one per core)")
    parser.add_argument("--force", action="store_true", help="layer: rebuild even if cached")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if arguments.command == "layer":
            print(build_layer(arguments.force).relative_to(ROOT))
        else:
            print(package(arguments.stage, arguments.dist.resolve(), arguments.jobs))
    except (PackageError, defs.DefinitionsError) as e:
        print(f"package: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
