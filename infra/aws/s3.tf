# The aws replica and checkout buckets: private, encrypted, TLS only; the replica versioned (write-once keys,
# so versions only ever hold what an accident overwrote or deleted), checkouts expiring after DSS_BLOB_TTL_DAYS.

resource "aws_s3_bucket" "dss" {
  for_each      = local.aws_buckets
  bucket        = each.value.name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "dss" {
  for_each = local.aws_buckets
  bucket   = aws_s3_bucket.dss[each.key].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "dss" {
  for_each                = local.aws_buckets
  bucket                  = aws_s3_bucket.dss[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "dss" {
  for_each = local.aws_buckets
  bucket   = aws_s3_bucket.dss[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "dss" {
  for_each = local.aws_buckets
  bucket   = aws_s3_bucket.dss[each.key].id
  versioning_configuration {
    status = each.value.role == "replica" ? "Enabled" : "Disabled" # checkouts are copies that expire
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "dss" {
  for_each = local.aws_buckets
  bucket   = aws_s3_bucket.dss[each.key].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  dynamic "rule" {
    for_each = each.value.expiration_days > 0 ? [each.value.expiration_days] : []
    content {
      id     = "expire-checkouts"
      status = "Enabled"
      filter {}
      expiration {
        days = rule.value
      }
    }
  }

  dynamic "rule" {
    for_each = each.value.role == "replica" ? [1] : []
    content {
      id     = "expire-overwritten-versions"
      status = "Enabled"
      filter {}
      noncurrent_version_expiration {
        noncurrent_days = 30
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.dss]
}

data "aws_iam_policy_document" "bucket" {
  for_each = local.aws_buckets
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.dss[each.key].arn, "${aws_s3_bucket.dss[each.key].arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "dss" {
  for_each   = local.aws_buckets
  bucket     = aws_s3_bucket.dss[each.key].id
  policy     = data.aws_iam_policy_document.bucket[each.key].json
  depends_on = [aws_s3_bucket_public_access_block.dss]
}

# S3 object events of the replica -> the S3 events topic -> every handler queue (events.tf).
resource "aws_s3_bucket_notification" "replica" {
  for_each = { for key, bucket in local.aws_buckets : key => bucket if bucket.events }
  bucket   = aws_s3_bucket.dss[each.key].id
  topic {
    topic_arn = aws_sns_topic.s3_events.arn
    events    = local.d.s3_events.events
  }
  depends_on = [aws_sns_topic_policy.s3_events]
}
