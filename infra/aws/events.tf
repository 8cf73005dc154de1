# The event bus (dss/events/sqs.py): the SNS topic, and per handler a queue with its dead-letter queue,
# subscribed raw with a filter on the `handlers` message attribute, as dss.events.sqs.provision() does.
# The aws replica's S3 object events (dss/events/s3_events.py) come through a topic of their own, to which
# every handler queue subscribes raw without a filter: S3 cannot set the `handlers` attribute.

resource "aws_sns_topic" "events" {
  name              = local.d.topic
  kms_master_key_id = "alias/aws/sns"
}

data "aws_iam_policy_document" "topic" {
  statement {
    sid       = "OwnerAccountOnly"
    actions   = ["sns:Publish", "sns:Subscribe", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.events.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account}:root"]
    }
  }
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.topic.json
}

resource "aws_sns_topic" "s3_events" {
  name = local.d.s3_events.topic
  # S3 cannot publish to a topic encrypted with the AWS-managed key: a key of our own, usable by S3.
  kms_master_key_id = aws_kms_key.s3_events.arn
}

resource "aws_kms_key" "s3_events" {
  description         = "dss-${var.stage}: the S3 events topic"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.s3_events_key.json
}

data "aws_iam_policy_document" "s3_events_key" {
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy "*" is the key itself
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account}:root"]
    }
  }
  statement {
    sid       = "S3PublishesReplicaEvents"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

data "aws_iam_policy_document" "s3_events_topic" {
  statement {
    sid       = "OwnerAccountReads"
    actions   = ["sns:Subscribe", "sns:GetTopicAttributes"]
    resources = [aws_sns_topic.s3_events.arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account}:root"]
    }
  }
  statement {
    sid       = "ReplicaBucketEvents"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.s3_events.arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.dss["aws_replica"].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_sns_topic_policy" "s3_events" {
  arn    = aws_sns_topic.s3_events.arn
  policy = data.aws_iam_policy_document.s3_events_topic.json
}

resource "aws_sqs_queue" "dead_letters" {
  for_each                  = local.d.queues
  name                      = each.value.dead_letter_queue
  message_retention_seconds = each.value.retention
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "handler" {
  for_each                   = local.d.queues
  name                       = each.value.name
  visibility_timeout_seconds = each.value.visibility_timeout
  message_retention_seconds  = each.value.retention
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters[each.key].arn
    maxReceiveCount     = each.value.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letters" {
  for_each  = local.d.queues
  queue_url = aws_sqs_queue.dead_letters[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.handler[each.key].arn]
  })
}

data "aws_iam_policy_document" "queue" {
  for_each = local.d.queues
  statement {
    sid       = "FromTheBusTopics"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.handler[each.key].arn]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.events.arn, aws_sns_topic.s3_events.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "handler" {
  for_each  = local.d.queues
  queue_url = aws_sqs_queue.handler[each.key].id
  policy    = data.aws_iam_policy_document.queue[each.key].json
}

resource "aws_sns_topic_subscription" "handler" {
  for_each             = local.d.queues
  topic_arn            = aws_sns_topic.events.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.handler[each.key].arn
  raw_message_delivery = true
  filter_policy        = jsonencode({ handlers = [each.key] })
  depends_on           = [aws_sqs_queue_policy.handler]
}

# Every handler takes every S3 event of the replica (no filter: S3 sends no `handlers` attribute).
resource "aws_sns_topic_subscription" "s3_events" {
  for_each             = local.d.queues
  topic_arn            = aws_sns_topic.s3_events.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.handler[each.key].arn
  raw_message_delivery = true
  depends_on           = [aws_sqs_queue_policy.handler]
}
