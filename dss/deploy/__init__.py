"""Deployment support: the resource definitions (`dss.deploy.definitions`, evaluated from the provider-less
Terraform module `infra/definitions/`) and the IAM policy templates (`dss.deploy.policies`)."""
