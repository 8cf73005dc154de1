# One state machine per workflow definition, its Task placeholders bound to the task Lambdas' ARNs exactly as
# dss.workflows.binding.bind(definition, lambda_arns(region, account, task_function_prefix)) does.

locals {
  placeholder_prefix = "arn:aws:lambda:::function:dss-task-"
  task_arn_prefix    = "arn:${data.aws_partition.current.partition}:lambda:${var.aws_region}:${local.account}:function:${local.d.task_function_prefix}"
}

resource "aws_cloudwatch_log_group" "states" {
  name              = "/aws/vendedlogs/states/dss-${var.stage}"
  retention_in_days = var.log_retention_days
}

resource "aws_sfn_state_machine" "workflow" {
  for_each = local.d.state_machines
  name     = each.value.name
  role_arn = aws_iam_role.states.arn
  definition = replace(file("${path.module}/../../${each.value.definition_file}"),
  local.placeholder_prefix, local.task_arn_prefix)

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.states.arn}:*"
    include_execution_data = false # inputs name keys and buckets; errors and causes are logged without them
    level                  = "ERROR"
  }

  tracing_configuration {
    enabled = true
  }

  depends_on = [aws_iam_role_policy.states]
}
