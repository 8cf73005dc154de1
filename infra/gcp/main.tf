module "definitions" {
  source           = "../definitions"
  stage            = var.stage
  aws_replica_url  = var.aws_replica_url
  gcp_replica_url  = var.gcp_replica_url
  aws_checkout_url = var.aws_checkout_url
  gcp_checkout_url = var.gcp_checkout_url
  queue_url        = var.queue_url
  blob_ttl_days    = var.blob_ttl_days
  gcp_project      = var.gcp_project
}

locals {
  d           = module.definitions
  gcp_buckets = { for key, bucket in local.d.buckets : key => bucket if bucket.cloud == "gcp" }
  viewers     = compact([for member in split(",", var.checkout_bucket_object_viewers) : trimspace(member)])
}

# --- buckets: private (uniform access, public access prevented), versioned replica, expiring checkouts ------
resource "google_storage_bucket" "dss" {
  for_each                    = local.gcp_buckets
  name                        = each.value.name
  location                    = var.gcp_region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy

  versioning {
    enabled = each.value.role == "replica"
  }

  lifecycle_rule {
    action {
      type = "AbortIncompleteMultipartUpload"
    }
    condition {
      age = 7
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.expiration_days > 0 ? [each.value.expiration_days] : []
    content {
      action {
        type = "Delete"
      }
      condition {
        age = lifecycle_rule.value
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = each.value.role == "replica" ? [1] : []
    content {
      action {
        type = "Delete"
      }
      condition {
        days_since_noncurrent_time = 30
        with_state                 = "ARCHIVED"
      }
    }
  }
}

# --- object events: replica bucket -> Pub/Sub topic -> the relay's pull subscription ------------------------
resource "google_pubsub_topic" "events" {
  name                       = local.d.pubsub.topic
  message_retention_duration = "604800s"
}

resource "google_pubsub_subscription" "relay" {
  name                       = local.d.pubsub.subscription
  topic                      = google_pubsub_topic.events.id
  ack_deadline_seconds       = local.d.pubsub.ack_deadline
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = "" # never expires, however long the relay is stopped
  }
}

data "google_storage_project_service_account" "gcs" {}

resource "google_pubsub_topic_iam_member" "gcs_publishes" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_storage_notification" "replica" {
  bucket         = google_storage_bucket.dss["gcp_replica"].name
  topic          = google_pubsub_topic.events.id
  payload_format = "JSON_API_V1"
  event_types    = local.d.pubsub.event_types
  depends_on     = [google_pubsub_topic_iam_member.gcs_publishes]
}

# --- the service account of the Lambdas: objects in its two buckets, and the relay's subscription ----------
resource "google_service_account" "dss" {
  account_id   = "dss-${var.stage}-runtime"
  display_name = "DSS ${var.stage} (used by the AWS Lambdas through the secret gcp-credentials.json)"
}

resource "google_storage_bucket_iam_member" "runtime_objects" {
  for_each = local.gcp_buckets
  bucket   = google_storage_bucket.dss[each.key].name
  role     = "roles/storage.objectUser" # objects only: no IAM, no bucket settings
  member   = "serviceAccount:${google_service_account.dss.email}"
}

resource "google_pubsub_subscription_iam_member" "runtime_pulls" {
  subscription = google_pubsub_subscription.relay.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.dss.email}"
}

resource "google_storage_bucket_iam_member" "checkout_viewers" {
  for_each = toset(local.viewers)
  bucket   = google_storage_bucket.dss["gcp_checkout"].name
  role     = "roles/storage.objectViewer"
  member   = each.value
}
