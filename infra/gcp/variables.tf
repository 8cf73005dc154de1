# infra/run.sh sets each variable from the DSS_* setting of the same name (TF_VAR_<name>).

variable "stage" {
  description = "DSS_DEPLOYMENT_STAGE."
  type        = string
}

variable "gcp_project" {
  description = "DSS_GCP_PROJECT: the project holding the buckets, the topic and the service account."
  type        = string
}

variable "gcp_region" {
  description = "DSS_GCP_REGION: where the buckets live."
  type        = string
  default     = "US-CENTRAL1"
}

variable "aws_replica_url" {
  type    = string
  default = ""
}

variable "gcp_replica_url" {
  type    = string
  default = ""
}

variable "aws_checkout_url" {
  type    = string
  default = ""
}

variable "gcp_checkout_url" {
  type    = string
  default = ""
}

variable "queue_url" {
  type    = string
  default = "sns://"
}

variable "blob_ttl_days" {
  type    = number
  default = 14
}

variable "checkout_bucket_object_viewers" {
  description = "DSS_CHECKOUT_BUCKET_OBJECT_VIEWERS (comma-separated IAM members, e.g. group:readers@example.org): may read the gcp checkout bucket."
  type        = string
  default     = ""
}

variable "force_destroy" {
  description = "Let `make destroy` delete non-empty buckets (test stages only)."
  type        = bool
  default     = false
}
