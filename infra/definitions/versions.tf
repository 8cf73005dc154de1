# The single source of the deployment's resource definitions: a provider-less module (variables, locals
# and outputs only), so it evaluates offline. The components under infra/aws and infra/gcp create one real
# resource per entry of its outputs; dss/deploy/definitions.py evaluates it for the loopback emulators and
# the consistency check.
terraform {
  required_version = ">= 1.3.0"
}
