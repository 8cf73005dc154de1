# The event bus (dss/events/sqs.py): the SNS topic, and per handler a queue with its dead-letter queue,
# subscribed raw with a filter on the `handlers` message attribute, as dss.events.sqs.provision() does.

resource "aws_sns_topic" "events" {
  name = local.d.topic
  # S3 cannot publish to a topic encrypted with the AWS-managed key: with S3 notifications on, a key of our own.
  kms_master_key_id = var.s3_event_notifications ? aws_kms_key.events[0].arn : "alias/aws/sns"
}

# Only with S3 notifications: the topic's key, usable by S3 and, through SNS, by the Lambdas that publish.
resource "aws_kms_key" "events" {
  count               = var.s3_event_notifications ? 1 : 0
  description         = "dss-${var.stage}: the event bus topic"
  enable_key_rotation = true
  policy              = data.aws_iam_policy_document.events_key.json
}

data "aws_iam_policy_document" "events_key" {
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
  }
  statement {
    sid       = "LambdasPublishThroughSns"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [for key, role in aws_iam_role.lambda : role.arn if contains(local.publishers, key)]
    }
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sns.${var.aws_region}.amazonaws.com"]
    }
  }
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
  dynamic "statement" {
    for_each = var.s3_event_notifications ? [1] : []
    content {
      sid       = "ReplicaBucketEvents"
      actions   = ["sns:Publish"]
      resources = [aws_sns_topic.events.arn]
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
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.topic.json
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
    sid       = "FromTheBusTopic"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.handler[each.key].arn]
    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.events.arn]
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
