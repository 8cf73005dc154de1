# One role per Lambda with its policy from iam/policy-templates (one template per Lambda; every workflow
# task Lambda uses task.json), the Step Functions role and API Gateway's logging role. The Chalice
# packaging (make package) points each function at its role: output lambda_role_arns.

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "lambda" {
  for_each           = local.d.lambdas
  name               = each.value.name
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
}

resource "aws_iam_role_policy" "lambda" {
  for_each = local.d.lambdas
  name     = each.value.name
  role     = aws_iam_role.lambda[each.key].id
  policy = templatefile("${local.policy_dir}/${each.value.policy}.json",
  merge(local.policy_values, { function_name = each.value.name }))
}

data "aws_iam_policy_document" "assume_states" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "states" {
  name               = "dss-${var.stage}-states"
  assume_role_policy = data.aws_iam_policy_document.assume_states.json
}

resource "aws_iam_role_policy" "states" {
  name   = "dss-${var.stage}-states"
  role   = aws_iam_role.states.id
  policy = templatefile("${local.policy_dir}/states.json", merge(local.policy_values, { function_name = "" }))
}

data "aws_iam_policy_document" "assume_api_gateway" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "api_gateway" {
  name               = "dss-${var.stage}-api-gateway"
  assume_role_policy = data.aws_iam_policy_document.assume_api_gateway.json
}

resource "aws_iam_role_policy" "api_gateway" {
  name   = "dss-${var.stage}-api-gateway"
  role   = aws_iam_role.api_gateway.id
  policy = templatefile("${local.policy_dir}/api-gateway.json", merge(local.policy_values, { function_name = "" }))
}

# The Lambdas' log groups, made here so that their retention is set (Lambda would create them unbounded).
resource "aws_cloudwatch_log_group" "lambda" {
  for_each          = local.d.lambdas
  name              = "/aws/lambda/${each.value.name}"
  retention_in_days = var.log_retention_days
}
