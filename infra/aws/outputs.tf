output "lambda_role_arns" {
  description = "The role of each Lambda, by function name (Chalice's iam_role_arn per function)."
  value       = { for key, fn in local.d.lambdas : fn.name => aws_iam_role.lambda[key].arn }
}

output "states_role_arn" {
  value = aws_iam_role.states.arn
}

output "api_gateway_role_arn" {
  description = "For the account's API Gateway CloudWatch setting (aws_api_gateway_account), if the operator wants execution logs."
  value       = aws_iam_role.api_gateway.arn
}

output "topic_arn" {
  value = aws_sns_topic.events.arn
}

output "queue_arns" {
  value = { for handler, queue in aws_sqs_queue.handler : handler => queue.arn }
}

output "state_machine_arns" {
  value = { for workflow, machine in aws_sfn_state_machine.workflow : workflow => machine.arn }
}

output "search_url" {
  description = "DSS_SEARCH_URL of the stage."
  value       = "https://${aws_opensearch_domain.search.endpoint}"
}

output "api_domain_target" {
  value = { for key, domain in aws_api_gateway_domain_name.api : key => domain.regional_domain_name }
}
