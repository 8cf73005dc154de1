output "service_account_email" {
  description = "Make its key by hand (gcloud iam service-accounts keys create) and store it: dss-ops.py secrets set gcp-credentials.json."
  value       = google_service_account.dss.email
}

output "pubsub_subscription" {
  value = google_pubsub_subscription.relay.id
}

output "buckets" {
  value = { for key, bucket in google_storage_bucket.dss : key => bucket.url }
}
