# The AWS side of a stage. Every resource is one entry of module.definitions (infra/definitions), so the
# names here are the names the code uses. Run it through infra/run.sh, which reads the stage's environment
# files and configures the S3 backend from DSS_TERRAFORM_BACKEND_BUCKET_TEMPLATE.
terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }
  # Partial configuration: bucket, key and region come from `terraform init -backend-config=…` (infra/run.sh).
  backend "s3" {}
}

provider "aws" {
  region = var.aws_region
  default_tags {
    tags = {
      service = "dss"
      stage   = var.stage
    }
  }
}
