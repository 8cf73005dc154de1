module "definitions" {
  source           = "../definitions"
  stage            = var.stage
  aws_replica_url  = var.aws_replica_url
  gcp_replica_url  = var.gcp_replica_url
  aws_checkout_url = var.aws_checkout_url
  gcp_checkout_url = var.gcp_checkout_url
  queue_url        = var.queue_url
  blob_ttl_days    = var.blob_ttl_days
  gcp_project      = var.gcp_project
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  d           = module.definitions
  account     = data.aws_caller_identity.current.account_id
  aws_buckets = { for key, bucket in local.d.buckets : key => bucket if bucket.cloud == "aws" }
  # The placeholders of iam/policy-templates (dss/deploy/policies.py renders the same documents).
  policy_values = {
    region          = var.aws_region
    account         = local.account
    stage           = var.stage
    replica_bucket  = local.d.buckets.aws_replica.name
    checkout_bucket = local.d.buckets.aws_checkout.name
    topic           = local.d.topic
    search_domain   = local.d.search.domain
  }
  policy_dir = "${path.module}/../../iam/policy-templates"
}
