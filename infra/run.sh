#!/usr/bin/env bash
# infra/run.sh COMPONENT COMMAND [terraform arguments...]   e.g. infra/run.sh aws plan
#
# Runs Terraform for one component (aws, gcp) of the stage DSS_DEPLOYMENT_STAGE: reads the settings from
# `environment` and then `environment.<stage>` (beside it, at the repository root), sets each component
# variable from its DSS_* setting (TF_VAR_<name>), initialises the S3 backend -- bucket named by
# DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE with {account_id}, {region} and {stage} filled in, state key
# <component>-<stage>.tfstate -- and runs COMMAND. Without AWS credentials it stops at once.
set -euo pipefail

usage() { echo "usage: infra/run.sh aws|gcp plan|apply|destroy|output|... [terraform arguments]" >&2; exit 2; }
[ $# -ge 2 ] || usage
component=$1 command=$2
shift 2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -d "$root/infra/$component" ] && [ "$component" != definitions ] || usage

stage=${DSS_DEPLOYMENT_STAGE:-}
[ -n "$stage" ] || { echo "infra/run.sh: set DSS_DEPLOYMENT_STAGE (the stage to deploy)" >&2; exit 2; }
set -a
# shellcheck source=/dev/null
. "$root/environment"
DSS_DEPLOYMENT_STAGE=$stage
if [ -f "$root/environment.$stage" ]; then
    # shellcheck source=/dev/null
    . "$root/environment.$stage"
else
    echo "infra/run.sh: no environment.$stage beside environment (copy environment.dev and edit it)" >&2
    exit 2
fi
set +a

python=${PYTHON:-$root/.venv/bin/python}
account=$("$python" -c 'import boto3; print(boto3.client("sts").get_caller_identity()["Account"])' 2>/dev/null) || {
    echo "infra/run.sh: no usable AWS credentials (configure them, e.g. AWS_PROFILE, and AWS_DEFAULT_REGION)" >&2
    exit 3
}
region=${AWS_DEFAULT_REGION:?infra/run.sh: set AWS_DEFAULT_REGION}
template=${DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE:-dss-terraform-{account_id}}
bucket=${template//\{account_id\}/$account}
bucket=${bucket//\{region\}/$region}
bucket=${bucket//\{stage\}/$stage}

# Component variables from the settings; unset settings keep the variables' defaults.
export_var() { if [ -n "${2:-}" ]; then export "TF_VAR_$1=$2"; fi; }
export_var stage "$stage"
export_var aws_region "$region"
export_var aws_replica_url "${DSS_AWS_REPLICA_URL:-}"
export_var gcp_replica_url "${DSS_GCP_REPLICA_URL:-}"
export_var aws_checkout_url "${DSS_AWS_CHECKOUT_URL:-}"
export_var gcp_checkout_url "${DSS_GCP_CHECKOUT_URL:-}"
export_var queue_url "${DSS_QUEUE_URL:-}"
export_var blob_ttl_days "${DSS_BLOB_TTL_DAYS:-}"
export_var gcp_project "${DSS_GCP_PROJECT:-}"
export_var gcp_region "${DSS_GCP_REGION:-}"
export_var es_instance_type "${DSS_ES_INSTANCE_TYPE:-}"
export_var es_instance_count "${DSS_ES_INSTANCE_COUNT:-}"
export_var es_volume_size "${DSS_ES_VOLUME_SIZE:-}"
export_var es_engine_version "${DSS_ES_ENGINE_VERSION:-}"
export_var es_allowed_ips "${DSS_ES_ALLOWED_IPS:-}"
export_var es_index_logs_enabled "${DSS_ES_DOMAIN_INDEX_LOGS_ENABLED:-}"
api_url=${DSS_API_URL:-}
api_host=${api_url#https://}
[ "$api_host" != "$api_url" ] && export_var api_domain_name "${api_host%%/*}"  # the API's custom domain
export_var route53_zone "${DSS_ROUTE53_ZONE:-}"
export_var log_retention_days "${DSS_LOG_RETENTION_DAYS:-}"
export_var checkout_bucket_object_viewers "${DSS_CHECKOUT_BUCKET_OBJECT_VIEWERS:-}"
if [ "${DSS_DESTROYABLE:-0}" = 1 ]; then  # a test stage: make destroy may remove everything
    export TF_VAR_deletion_protection=false TF_VAR_secret_recovery_days=0 TF_VAR_force_destroy=true
fi

export TF_DATA_DIR="$root/infra/$component/.terraform-$stage"  # one working directory per stage
cd "$root/infra/$component"
terraform init -input=false -reconfigure \
    -backend-config="bucket=$bucket" -backend-config="key=$component-$stage.tfstate" \
    -backend-config="region=$region" -backend-config="encrypt=true" >/dev/null
exec terraform "$command" "$@"
