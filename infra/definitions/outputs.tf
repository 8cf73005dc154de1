output "stage" {
  value = var.stage
}

output "buckets" {
  description = "aws_replica, gcp_replica, aws_checkout, gcp_checkout: url, cloud, role, name, expiration_days (0: none), events."
  value       = local.buckets
}

output "topic" {
  description = "The SNS topic of the event bus (dss.events.sqs.bus_name)."
  value       = local.topic
}

output "queues" {
  description = "The handler queues by handler, as dss.events.sqs.resources() describes them."
  value       = local.queues
}

output "s3_events" {
  description = "S3 object events of the aws replica: its notification's SNS topic (every handler queue subscribes, no filter), the bucket and the event types (dss.events.s3_events)."
  value       = local.s3_events
}

output "pubsub" {
  description = "GCS object events: the Pub/Sub topic, the relay's pull subscription and the notifying bucket."
  value       = local.pubsub
}

output "tables" {
  description = "DynamoDB tables by the name the code opens, with their string keys."
  value       = local.tables
}

output "state_machines" {
  description = "By workflow: name, definition file (from the repository root) and the tasks it runs."
  value       = local.state_machines
}

output "task_function_prefix" {
  value = local.task_function_prefix
}

output "lambdas" {
  description = "Every Lambda: name, kind, source, handler, trigger (type, queue, schedule), timeout, memory, reserved_concurrency (-1: none), policy (its template in iam/policy-templates)."
  value       = local.lambda_functions
}

output "secrets" {
  description = "Secrets Manager entries (names only; values are set by operators)."
  value       = local.secrets
}

output "ssm_parameters" {
  value = local.ssm_parameters
}

output "environment" {
  description = "The DSS_* variables every Lambda gets from the deployment itself."
  value       = local.environment
}

output "search" {
  value = local.search
}
