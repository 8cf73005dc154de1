# Secrets Manager entries (names only: operators set the values with `scripts/dss-ops.py secrets set`) and
# the SSM parameter holding every Lambda's DSS_* environment (pushed into the functions by
# `dss-ops lambda env update-deployed` and `make deploy`; Terraform writes its first value only).

resource "aws_secretsmanager_secret" "dss" {
  for_each                = local.d.secrets
  name                    = each.value
  recovery_window_in_days = var.secret_recovery_days
}

resource "aws_ssm_parameter" "environment" {
  name = local.d.ssm_parameters.environment
  type = "String" # DSS_* settings only: every secret lives in Secrets Manager
  value = jsonencode(merge(local.d.environment, {
    DSS_SEARCH_URL = "https://${aws_opensearch_domain.search.endpoint}"
  }))
  lifecycle {
    ignore_changes = [value]
  }
}
