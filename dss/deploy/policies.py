"""The IAM policies of a deployment, rendered from `iam/policy-templates/<name>.json` for one stage.

One template per Lambda (`api`, `sync`, `index`, `journal`, `notify`, `gs-event-relay`, `scheduled`, and
`task` for every workflow task Lambda), plus `states` (the Step Functions role) and `api-gateway` (API
Gateway's logging role). Templates use `${name}` placeholders only, which Terraform's `templatefile()` and
Python's `string.Template` read alike, so `infra/aws` and this module render the same documents:

| placeholder | value |
|---|---|
| `${region}`, `${account}` | where the stage is deployed |
| `${stage}` | `DSS_DEPLOYMENT_STAGE` (table, state machine, secret and function names contain it) |
| `${function_name}` | the Lambda the policy is attached to (its own log group) |
| `${replica_bucket}`, `${checkout_bucket}` | the aws replica and checkout buckets |
| `${topic}` | the event bus topic; its queues are `${topic}-<handler>` and `…-dlq` |
| `${search_domain}` | the OpenSearch domain |

`python -m dss.deploy.policies STAGE REGION ACCOUNT [DSS_NAME=value ...]` prints every rendered policy.
"""
from __future__ import annotations

import json
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dss.deploy.definitions import Definitions, load

__all__ = ["TEMPLATES_DIR", "ROLES", "template_for", "placeholders", "render", "render_all"]

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "iam" / "policy-templates"
ROLES = ("states", "api-gateway")  # policies of roles that are not a DSS Lambda's


def template_for(definitions: Definitions, key: str) -> str:
    """The template name of the Lambda `key` of `definitions.lambdas` (or of a role in `ROLES`)."""
    return key if key in ROLES else str(definitions.lambdas[key]["policy"])


def placeholders(definitions: Definitions, region: str, account: str, function_name: str = "") -> dict[str, str]:
    """The values of every placeholder for one policy (see the module docstring)."""
    return {"region": region, "account": account, "stage": definitions.stage, "function_name": function_name,
            "replica_bucket": definitions.bucket("aws_replica"), "checkout_bucket": definitions.bucket("aws_checkout"),
            "topic": definitions.topic, "search_domain": definitions.search["domain"]}


def render(template: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The policy document of template `template` with `values`; KeyError for a placeholder without one."""
    text = (TEMPLATES_DIR / f"{template}.json").read_text()
    document = json.loads(string.Template(text).substitute(values))
    if not isinstance(document, dict):
        raise ValueError(f"policy template {template!r} is not a JSON object")
    return document


def render_all(definitions: Definitions, region: str, account: str) -> dict[str, dict[str, Any]]:
    """Every policy of the stage: by Lambda key (as in `definitions.lambdas`), and by role in `ROLES`."""
    rendered = {key: render(template_for(definitions, key), placeholders(definitions, region, account, fn["name"]))
                for key, fn in definitions.lambdas.items()}
    rendered.update({role: render(role, placeholders(definitions, region, account)) for role in ROLES})
    return rendered


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m dss.deploy.policies STAGE REGION ACCOUNT [DSS_NAME=value ...]`: every policy, as JSON."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) < 3 or arguments[0].startswith("-"):
        print(main.__doc__, file=sys.stderr)
        return 2
    stage, region, account, *rest = arguments
    settings = dict(argument.split("=", 1) for argument in rest if "=" in argument)
    print(json.dumps(render_all(load(stage, settings), region, account), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
