locals {
  prefix = "dss-${var.stage}-"

  # --- buckets (operator-chosen; the defaults keep two stages apart) -------------------------------------
  bucket_urls = {
    aws_replica  = var.aws_replica_url != "" ? var.aws_replica_url : "s3://${local.prefix}replica"
    gcp_replica  = var.gcp_replica_url != "" ? var.gcp_replica_url : "gs://${local.prefix}replica"
    aws_checkout = var.aws_checkout_url != "" ? var.aws_checkout_url : "s3://${local.prefix}checkout"
    gcp_checkout = var.gcp_checkout_url != "" ? var.gcp_checkout_url : "gs://${local.prefix}checkout"
  }
  buckets = {
    for key, url in local.bucket_urls : key => {
      url   = url
      cloud = split("_", key)[0]
      role  = split("_", key)[1]
      name  = regex("^(?:s3|gs)://([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])/?$", url)[0]
      # Checked-out copies expire; the replicas keep everything (their events feed the bus).
      expiration_days = split("_", key)[1] == "checkout" ? ceil(var.blob_ttl_days) : 0
      events          = split("_", key)[1] == "replica"
    }
  }

  # --- the event bus (as dss.events.sqs.parse_queue_url and resources()) ----------------------------------
  queue_name   = regex("^sns://([A-Za-z0-9_-]*)", var.queue_url)[0]
  topic        = local.queue_name != "" ? local.queue_name : "dss-events-${var.stage}"
  max_receives = try(tonumber(regex("[?&]max_receives=([0-9]+)", var.queue_url)[0]), 5)
  visibility   = try(tonumber(regex("[?&]visibility=([0-9]+)", var.queue_url)[0]), 320)
  retention    = 14 * 24 * 3600
  handlers     = ["sync", "index", "journal"]
  queues = {
    for handler in local.handlers : handler => {
      name               = "${local.topic}-${handler}"
      dead_letter_queue  = "${local.topic}-${handler}-dlq"
      visibility_timeout = local.visibility
      retention          = local.retention
      max_receive_count  = local.max_receives
    }
  }

  # --- S3 object events: the aws replica's notification -> its own topic -> every handler queue -----------
  # (dss.events.s3_events: subscribed raw without a filter, as S3 cannot set the `handlers` attribute)
  s3_events = {
    topic  = "dss-s3-events-${var.stage}"
    bucket = local.buckets.aws_replica.name
    events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
  }

  # --- GCS object events: bucket notification -> Pub/Sub -> the relay Lambda -> the bus ------------------
  pubsub = {
    project      = var.gcp_project
    topic        = "dss-gs-events-${var.stage}"
    subscription = "dss-gs-events-${var.stage}-relay"
    bucket       = local.buckets.gcp_replica.name
    event_types  = ["OBJECT_FINALIZE", "OBJECT_DELETE"]
    ack_deadline = 60
  }

  # --- tables: every name the code opens through Runtime.tables (prefix dss-<stage>-), all with the table port's
  # string keys hash_key/sort_key (dss/tables/dynamodb.py); the deliveries table (dss/notify/dynamodb.py
  # table_schema) adds two global secondary indexes.
  table_names = ["subscriptions", "owners", "async-state", "collections", "checkout", "deliveries"]
  table_indexes = {
    deliveries = [
      {
        name = "by-subscription", hash_key = "subscription_id", range_key = "created_at", projection = "INCLUDE"
        non_key_attributes = ["owner", "event_id", "spec", "state", "next_attempt_at", "lease_owner", "finished_at",
        "last_error", "attempt_log"]
      },
      { name = "due", hash_key = "due_queue", range_key = "due_at", projection = "KEYS_ONLY", non_key_attributes = [] },
    ]
  }
  table_attributes = {
    deliveries = { subscription_id = "S", created_at = "N", due_queue = "S", due_at = "N" }
  }
  tables = {
    for table in local.table_names : table => {
      name       = "${local.prefix}${table}"
      hash_key   = "hash_key"
      sort_key   = "sort_key"
      attributes = merge({ hash_key = "S", sort_key = "S" }, lookup(local.table_attributes, table, {}))
      indexes    = lookup(local.table_indexes, table, [])
    }
  }

  # --- workflows: one state machine per definition file, its tasks named by placeholder Resources ---------
  definitions_dir = var.definitions_dir != "" ? var.definitions_dir : "${path.module}/../../dss/workflows/definitions"
  workflow_files  = sort(tolist(fileset(local.definitions_dir, "*.json")))
  state_machines = {
    for file in local.workflow_files : trimsuffix(file, ".json") => {
      name            = "${local.prefix}${trimsuffix(file, ".json")}"
      definition_file = "dss/workflows/definitions/${file}"
      tasks = sort(distinct(flatten(regexall(
        "arn:aws:lambda:::function:dss-task-([a-z][a-z0-9-]*)", file("${local.definitions_dir}/${file}")
      ))))
    }
  }
  task_names           = sort(distinct(flatten([for machine in local.state_machines : machine.tasks])))
  task_function_prefix = "${local.prefix}task-"

  # --- Lambdas ---------------------------------------------------------------------------------------------
  timeout    = merge({ api = 300, queue = 300, notify = 300, relay = 120, scheduled = 600, task = 900 }, var.lambda_timeout)
  memory     = merge({ api = 1536, queue = 1536, notify = 512, relay = 256, scheduled = 1024, task = 1536 }, var.lambda_memory)
  no_trigger = { type = "", queue = "", schedule = "", batch_size = 0 }
  lambdas = merge(
    {
      api = {
        name                 = "${local.prefix}api", kind = "api", source = "chalice", handler = "app.app"
        trigger              = merge(local.no_trigger, { type = "api" })
        reserved_concurrency = -1
      }
      notify = {
        name                 = "${local.prefix}notify", kind = "notify", source = "daemons/notify", handler = "app.notify"
        trigger              = merge(local.no_trigger, { type = "schedule", schedule = "rate(1 minute)" })
        reserved_concurrency = -1 # overlapping runs are safe: deliveries are claimed with conditional writes
      }
      gs-event-relay = {
        name                 = "${local.prefix}gs-event-relay", kind = "relay", source = "daemons/gs-event-relay", handler = "app.gs_event_relay"
        trigger              = merge(local.no_trigger, { type = "schedule", schedule = "rate(1 minute)" })
        reserved_concurrency = -1 # overlapping pulls are safe: each message is published before it is acked
      }
      scheduled = {
        name                 = "${local.prefix}scheduled", kind = "scheduled", source = "daemons/scheduled", handler = "app.scheduled"
        trigger              = merge(local.no_trigger, { type = "schedule", schedule = "rate(10 minutes)" })
        reserved_concurrency = 1 # one housekeeping pass at a time (journal compaction, re-drive cap)
      }
    },
    {
      for handler in local.handlers : handler => {
        name                 = "${local.prefix}${handler}", kind = "queue", source = "daemons/${handler}", handler = "app.${handler}"
        trigger              = merge(local.no_trigger, { type = "sqs", queue = local.queues[handler].name, batch_size = 10 })
        reserved_concurrency = -1
      }
    },
    {
      for task in local.task_names : "task-${task}" => {
        name                 = "${local.task_function_prefix}${task}", kind = "task", source = "daemons/workflows"
        handler              = "app.task_${replace(task, "-", "_")}"
        trigger              = merge(local.no_trigger, { type = "stepfunctions" })
        reserved_concurrency = -1
      }
    },
  )
  lambda_functions = {
    for key, fn in local.lambdas : key => merge(fn, {
      timeout = local.timeout[fn.kind]
      memory  = local.memory[fn.kind]
      # iam/policy-templates/<policy>.json: one per Lambda, one for all the workflow task Lambdas
      policy = fn.kind == "task" ? "task" : key
    })
  }

  # --- configuration: secrets and the SSM parameter holding the Lambdas' environment ----------------------
  secret_names = ["url-signing-key", "token-issuer-key", "service-accounts", "gcp-credentials.json",
  "admin-emails", "application-secrets.json"]
  secrets_prefix = "dss/${var.stage}/"
  secrets        = { for secret in local.secret_names : secret => "${local.secrets_prefix}${secret}" }
  ssm_parameters = { environment = "/dss/${var.stage}/environment" }

  # What every Lambda's environment holds besides the operator's DSS_* settings (pushed through SSM).
  environment = {
    DSS_DEPLOYMENT_STAGE = var.stage
    DSS_DATA_DIR         = "/tmp/dss"
    DSS_QUEUE_URL        = var.queue_url
    DSS_TABLES_URL       = "dynamodb://"
    DSS_WORKFLOWS_URL    = "stepfunctions://"
    DSS_SECRETS_URL      = "secretsmanager://${local.secrets_prefix}"
    DSS_AWS_REPLICA_URL  = local.buckets.aws_replica.url
    DSS_GCP_REPLICA_URL  = local.buckets.gcp_replica.url
    DSS_AWS_CHECKOUT_URL = local.buckets.aws_checkout.url
    DSS_GCP_CHECKOUT_URL = local.buckets.gcp_checkout.url
    DSS_BLOB_TTL_DAYS    = tostring(var.blob_ttl_days)
  }

  # The OpenSearch domain (sizes and access in infra/aws from DSS_ES_* settings).
  search = { domain = "dss-${var.stage}" }
}
