# The API's custom domain (API_DOMAIN_NAME): an ACM certificate validated in Route 53, a regional API Gateway
# domain, its alias record, and (once the Chalice deployment gave the REST API's id) the base path mapping.

locals {
  custom_domain = var.api_domain_name != "" ? { api = var.api_domain_name } : {}
}

data "aws_route53_zone" "api" {
  for_each     = local.custom_domain
  name         = var.route53_zone
  private_zone = false
}

resource "aws_acm_certificate" "api" {
  for_each          = local.custom_domain
  domain_name       = each.value
  validation_method = "DNS"
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "api_validation" {
  for_each = {
    for option in flatten([for cert in aws_acm_certificate.api : cert.domain_validation_options]) :
    option.domain_name => option
  }
  zone_id         = data.aws_route53_zone.api["api"].zone_id
  name            = each.value.resource_record_name
  type            = each.value.resource_record_type
  records         = [each.value.resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "api" {
  for_each                = local.custom_domain
  certificate_arn         = aws_acm_certificate.api[each.key].arn
  validation_record_fqdns = [for record in aws_route53_record.api_validation : record.fqdn]
}

resource "aws_api_gateway_domain_name" "api" {
  for_each                 = local.custom_domain
  domain_name              = each.value
  regional_certificate_arn = aws_acm_certificate_validation.api[each.key].certificate_arn
  security_policy          = "TLS_1_2"
  endpoint_configuration {
    types = ["REGIONAL"]
  }
}

resource "aws_route53_record" "api" {
  for_each = local.custom_domain
  zone_id  = data.aws_route53_zone.api[each.key].zone_id
  name     = each.value
  type     = "A"
  alias {
    name                   = aws_api_gateway_domain_name.api[each.key].regional_domain_name
    zone_id                = aws_api_gateway_domain_name.api[each.key].regional_zone_id
    evaluate_target_health = false
  }
}

resource "aws_api_gateway_base_path_mapping" "api" {
  for_each    = var.api_rest_api_id != "" ? local.custom_domain : {}
  api_id      = var.api_rest_api_id
  stage_name  = var.api_gateway_stage
  domain_name = aws_api_gateway_domain_name.api[each.key].domain_name
}
