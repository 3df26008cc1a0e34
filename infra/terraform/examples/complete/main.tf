provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "backbeat"
      ManagedBy = "terraform"
    }
  }
}

locals {
  package_path = coalesce(var.package_path, "${path.module}/../../../../build/reverb-rollup-lambda.zip")
}

module "reverb_rollup" {
  source = "../../modules/reverb-rollup-lambda"

  name         = "backbeat-${var.cluster_id}-reverb-rollup"
  package_path = local.package_path
  architecture = "x86_64"
  memory_size  = 1024
  timeout      = 30

  # Exactly one report per window holds under concurrent instances, so the limit is about cost and
  # about not exhausting Redis connections during a trigger storm.
  reserved_concurrent_executions = 20
  maximum_retry_attempts         = 2
  maximum_event_age_in_seconds   = 900

  cluster_id  = var.cluster_id
  environment = "production"
  log_level   = "info"
  redis_url   = var.redis_url
  nats_url    = var.nats_url

  secrets_backend   = "vault"
  vault_addr        = var.vault_addr
  vault_kv_mount    = "secret"
  vault_secret_path = "backbeat/${var.cluster_id}"
  vault_auth_method = "approle"
  vault_role_id     = var.vault_role_id
  secret_arns = {
    vault_secret_id = var.vault_secret_id_arn
  }
  secrets_kms_key_arns = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]

  otel_environment = {
    OTEL_EXPORTER_OTLP_ENDPOINT = var.otel_collector_endpoint
    OTEL_EXPORTER_OTLP_PROTOCOL = "http/protobuf"
    OTEL_TRACES_SAMPLER         = "parentbased_traceidratio"
    OTEL_TRACES_SAMPLER_ARG     = "0.1"
  }

  vpc_id            = var.vpc_id
  subnet_ids        = var.private_subnet_ids
  redis_cidr_blocks = var.redis_cidr_blocks
  nats_cidr_blocks  = var.nats_cidr_blocks
  additional_egress_rules = {
    vault = {
      description = "Vault"
      port        = 8200
      cidr_blocks = var.vault_cidr_blocks
    }
    otlp = {
      description = "OpenTelemetry collector (OTLP/HTTP)"
      port        = 4318
      cidr_blocks = var.otel_collector_cidr_blocks
    }
    endpoints = {
      description = "Secrets Manager interface endpoint"
      port        = 443
      cidr_blocks = var.endpoint_cidr_blocks
    }
  }

  log_retention_in_days = 365

  tags = {
    Environment = "production"
  }
}

# A message in the dead-letter queue means a window's rollup failed every retry: its report is
# missing until the trigger fires again or someone replays the message.
resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name          = "${module.reverb_rollup.function_name}-dead-letters"
  alarm_description   = "Rollup invocations failed all retries and were dead-lettered."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = module.reverb_rollup.dlq_name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${module.reverb_rollup.function_name}-errors"
  alarm_description   = "The rollup function reported errors."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = module.reverb_rollup.function_name }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}
