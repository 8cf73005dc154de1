# infra/run.sh sets each variable from the DSS_* setting of the same name (TF_VAR_<name>).

variable "stage" {
  description = "DSS_DEPLOYMENT_STAGE."
  type        = string
}

variable "aws_region" {
  description = "AWS_DEFAULT_REGION of the deployment."
  type        = string
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

variable "gcp_project" {
  type    = string
  default = ""
}

variable "es_instance_type" {
  description = "DSS_ES_INSTANCE_TYPE: OpenSearch data node type."
  type        = string
  default     = "m6g.large.search"
}

variable "es_instance_count" {
  description = "DSS_ES_INSTANCE_COUNT: OpenSearch data nodes (spread over availability zones when even)."
  type        = number
  default     = 2
}

variable "es_volume_size" {
  description = "DSS_ES_VOLUME_SIZE: GiB of gp3 storage per data node."
  type        = number
  default     = 35
}

variable "es_engine_version" {
  description = "DSS_ES_ENGINE_VERSION."
  type        = string
  default     = "OpenSearch_2.19"
}

variable "es_allowed_ips" {
  description = "DSS_ES_ALLOWED_IPS (comma-separated CIDRs): operators' addresses allowed to query the domain besides the Lambdas' roles."
  type        = string
  default     = ""
}

variable "es_index_logs_enabled" {
  description = "DSS_ES_DOMAIN_INDEX_LOGS_ENABLED: publish index and search slow logs to CloudWatch."
  type        = bool
  default     = false
}

variable "api_domain_name" {
  description = "The API's custom domain (the host of DSS_API_URL, set by infra/run.sh); empty: none."
  type        = string
  default     = ""
}

variable "route53_zone" {
  description = "DSS_ROUTE53_ZONE: the hosted zone of api_domain_name (e.g. example.org)."
  type        = string
  default     = ""
}

variable "api_rest_api_id" {
  description = "The id of the API's REST API (from the Chalice deployment), to map the custom domain onto; empty: no mapping yet."
  type        = string
  default     = ""
}

variable "api_gateway_stage" {
  description = "The API Gateway stage Chalice deploys (chalice/.chalice/config.json api_gateway_stage)."
  type        = string
  default     = "api"
}

variable "log_retention_days" {
  description = "DSS_LOG_RETENTION_DAYS: days CloudWatch keeps the Lambdas', Step Functions' and OpenSearch's logs."
  type        = number
  default     = 365
}

variable "deletion_protection" {
  description = "Protect the tables against deletion (off for test stages so that make destroy works)."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let terraform destroy delete non-empty buckets (test stages only: DSS_DESTROYABLE=1)."
  type        = bool
  default     = false
}

variable "secret_recovery_days" {
  description = "Days a deleted secret can be restored (0 deletes at once: test stages)."
  type        = number
  default     = 7
}
