# Each variable is the DSS_* setting of the same name in lower case without the prefix (DSS_AWS_REPLICA_URL
# is aws_replica_url); dss/deploy/definitions.py maps an environment file onto them.

variable "stage" {
  description = "The deployment stage (DSS_DEPLOYMENT_STAGE): part of every resource name."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,15}$", var.stage))
    error_message = "The stage must be 1-16 lower-case letters and digits, starting with a letter."
  }
}

variable "definitions_dir" {
  description = "Directory of the workflow definitions (*.json); empty: dss/workflows/definitions of this checkout."
  type        = string
  default     = ""
}

variable "aws_replica_url" {
  description = "s3://<bucket> of the aws replica; empty: s3://dss-<stage>-replica."
  type        = string
  default     = ""
}

variable "gcp_replica_url" {
  description = "gs://<bucket> of the gcp replica; empty: gs://dss-<stage>-replica."
  type        = string
  default     = ""
}

variable "aws_checkout_url" {
  description = "s3://<bucket> of the aws checkout store; empty: s3://dss-<stage>-checkout."
  type        = string
  default     = ""
}

variable "gcp_checkout_url" {
  description = "gs://<bucket> of the gcp checkout store; empty: gs://dss-<stage>-checkout."
  type        = string
  default     = ""
}

variable "queue_url" {
  description = "DSS_QUEUE_URL of the deployment: sns://[name][?max_receives=N&visibility=S&intent_delay=S]."
  type        = string
  default     = "sns://"
  validation {
    condition     = can(regex("^sns://[A-Za-z0-9_-]*(\\?.*)?$", var.queue_url))
    error_message = "A deployment's event bus is sns://[name][?query]."
  }
}

variable "blob_ttl_days" {
  description = "DSS_BLOB_TTL_DAYS: days a checked-out object lives in a checkout bucket."
  type        = number
  default     = 14
}

variable "gcp_project" {
  description = "The GCP project of the gcp replica and the Pub/Sub topic (DSS_GCP_PROJECT)."
  type        = string
  default     = ""
}

variable "lambda_timeout" {
  description = "Seconds each Lambda may run, by kind (api, queue, notify, relay, scheduled, task)."
  type        = map(number)
  default     = {}
}

variable "lambda_memory" {
  description = "MB of memory of each Lambda, by kind (api, queue, notify, relay, scheduled, task)."
  type        = map(number)
  default     = {}
}
