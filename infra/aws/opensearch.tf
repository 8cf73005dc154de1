# The search domain (DSS_SEARCH_URL=https://<endpoint>, SigV4-signed by the Lambdas' roles).

locals {
  searchers   = [for key in ["api", "index", "scheduled"] : aws_iam_role.lambda[key].arn]
  domain_arn  = "arn:${data.aws_partition.current.partition}:es:${var.aws_region}:${local.account}:domain/${local.d.search.domain}"
  allowed_ips = compact([for cidr in split(",", var.es_allowed_ips) : trimspace(cidr)])
}

data "aws_iam_policy_document" "search" {
  statement {
    sid       = "DssLambdas"
    actions   = ["es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpDelete"]
    resources = ["${local.domain_arn}/*"]
    principals {
      type        = "AWS"
      identifiers = local.searchers
    }
  }
  dynamic "statement" {
    for_each = length(local.allowed_ips) > 0 ? [1] : []
    content {
      sid       = "OperatorsReadFromAllowedAddresses"
      actions   = ["es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost"]
      resources = ["${local.domain_arn}/*"]
      principals {
        type        = "AWS"
        identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account}:root"]
      }
      condition {
        test     = "IpAddress"
        variable = "aws:SourceIp"
        values   = local.allowed_ips
      }
    }
  }
}

resource "aws_cloudwatch_log_group" "search" {
  for_each          = var.es_index_logs_enabled ? toset(["index-slow", "search-slow", "application"]) : toset([])
  name              = "/aws/opensearch/${local.d.search.domain}/${each.key}"
  retention_in_days = var.log_retention_days
}

data "aws_iam_policy_document" "search_logs" {
  statement {
    actions   = ["logs:PutLogEvents", "logs:CreateLogStream"]
    resources = [for group in aws_cloudwatch_log_group.search : "${group.arn}:*"]
    principals {
      type        = "Service"
      identifiers = ["es.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_cloudwatch_log_resource_policy" "search" {
  count           = var.es_index_logs_enabled ? 1 : 0
  policy_name     = "dss-${var.stage}-opensearch-logs"
  policy_document = data.aws_iam_policy_document.search_logs.json
}

resource "aws_opensearch_domain" "search" {
  domain_name     = local.d.search.domain
  engine_version  = var.es_engine_version
  access_policies = data.aws_iam_policy_document.search.json

  cluster_config {
    instance_type          = var.es_instance_type
    instance_count         = var.es_instance_count
    zone_awareness_enabled = var.es_instance_count > 1 && var.es_instance_count % 2 == 0
    dynamic "zone_awareness_config" {
      for_each = var.es_instance_count > 1 && var.es_instance_count % 2 == 0 ? [1] : []
      content {
        availability_zone_count = 2
      }
    }
  }

  ebs_options {
    ebs_enabled = true
    volume_type = "gp3"
    volume_size = var.es_volume_size
  }

  encrypt_at_rest {
    enabled = true
  }

  node_to_node_encryption {
    enabled = true
  }

  domain_endpoint_options {
    enforce_https       = true
    tls_security_policy = "Policy-Min-TLS-1-2-2019-07"
  }

  snapshot_options {
    automated_snapshot_start_hour = 23
  }

  dynamic "log_publishing_options" {
    for_each = aws_cloudwatch_log_group.search
    content {
      log_type                 = { index-slow = "INDEX_SLOW_LOGS", search-slow = "SEARCH_SLOW_LOGS", application = "ES_APPLICATION_LOGS" }[log_publishing_options.key]
      cloudwatch_log_group_arn = log_publishing_options.value.arn
    }
  }

  depends_on = [aws_cloudwatch_log_resource_policy.search]
}
