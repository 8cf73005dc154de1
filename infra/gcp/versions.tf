# The GCP side of a stage: the gcp replica and checkout buckets, the Pub/Sub topic and subscription the GCS
# event relay pulls, the bucket's notification, and the service account the Lambdas use (its key is made by
# the operator and stored as the secret gcp-credentials.json). State in the same S3 backend as infra/aws.
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
  backend "s3" {}
}

provider "google" {
  project = var.gcp_project
  region  = var.gcp_region
}
