data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # The log group is named the way Lambda names it, so nothing else ever creates a second one.
  log_group_name = "/aws/lambda/${var.name}"
  log_group_arn  = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_name}"

  kms_key_arn = var.create_kms_key ? aws_kms_key.this[0].arn : var.kms_key_arn

  dlq_arn         = var.create_dlq ? aws_sqs_queue.dlq[0].arn : var.dead_letter_target_arn
  dlq_is_sns      = !var.create_dlq && can(regex("^arn:aws[a-z-]*:sns:", var.dead_letter_target_arn))
  dlq_send_action = local.dlq_is_sns ? "sns:Publish" : "sqs:SendMessage"

  vault_environment = var.secrets_backend == "vault" ? merge(
    {
      VAULT_ADDR        = var.vault_addr
      VAULT_KV_MOUNT    = var.vault_kv_mount
      VAULT_SECRET_PATH = var.vault_secret_path
      # Informational: the project picks AppRole whenever VAULT_ROLE_ID is set.
      VAULT_AUTH_METHOD = var.vault_auth_method
    },
    var.vault_auth_method == "approle" ? {
      VAULT_ROLE_ID       = var.vault_role_id
      VAULT_APPROLE_MOUNT = var.vault_approle_mount
    } : {},
    var.vault_namespace != null ? { VAULT_NAMESPACE = var.vault_namespace } : {},
  ) : {}

  # Only references to secrets reach the environment; the function fetches the values at cold start.
  secret_environment = length(var.secret_arns) > 0 ? { BACKBEAT_SECRET_ARNS = jsonencode(var.secret_arns) } : {}

  otel_environment = merge(
    {
      OTEL_SERVICE_NAME        = var.otel_service_name
      OTEL_RESOURCE_ATTRIBUTES = "service.namespace=backbeat,deployment.environment=${var.environment},backbeat.cluster=${var.cluster_id}"
    },
    var.otel_environment,
  )

  environment_variables = merge(
    var.extra_environment_variables,
    {
      BACKBEAT_CLUSTER         = var.cluster_id
      BACKBEAT_ENV             = var.environment
      BACKBEAT_SECRETS_BACKEND = var.secrets_backend
      LOG_LEVEL                = var.log_level
      REDIS_URL                = var.redis_url
      NATS_URL                 = join(",", [for url in split(",", var.nats_url) : trimspace(url)])
    },
    local.vault_environment,
    local.secret_environment,
    local.otel_environment,
  )

  egress_rules = merge(
    { for cidr in var.redis_cidr_blocks : "redis-${cidr}" => { description = "Redis", port = var.redis_port, cidr = cidr } },
    { for cidr in var.nats_cidr_blocks : "nats-${cidr}" => { description = "NATS", port = var.nats_port, cidr = cidr } },
    merge([
      for key, rule in var.additional_egress_rules : {
        for cidr in rule.cidr_blocks : "${key}-${cidr}" => { description = rule.description, port = rule.port, cidr = cidr }
      }
    ]...),
  )

  tags = merge(var.tags, {
    "backbeat:cluster"   = var.cluster_id
    "backbeat:component" = "reverb-rollup"
  })
}

################################################################################
# Encryption key (environment variables, log group, dead-letter queue)
################################################################################

resource "aws_kms_key" "this" {
  count = var.create_kms_key ? 1 : 0

  description             = "Encrypts the environment, logs and dead letters of ${var.name}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_key_deletion_window_in_days

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Hands control to the account's IAM policies, as the default key policy does; the
        # function's role gets its narrow grants through its own policy below.
        Sid       = "AccountAdministration"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsForThisLogGroup"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action = [
          "kms:Encrypt*",
          "kms:Decrypt*",
          "kms:ReEncrypt*",
          "kms:GenerateDataKey*",
          "kms:Describe*",
        ]
        Resource = "*"
        Condition = {
          ArnEquals = { "kms:EncryptionContext:aws:logs:arn" = local.log_group_arn }
        }
      },
    ]
  })

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  count = var.create_kms_key ? 1 : 0

  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this[0].key_id
}

################################################################################
# Logs
################################################################################

resource "aws_cloudwatch_log_group" "this" {
  name              = local.log_group_name
  retention_in_days = var.log_retention_in_days
  kms_key_id        = local.kms_key_arn

  tags = local.tags
}

################################################################################
# Dead-letter queue
################################################################################

resource "aws_sqs_queue" "dlq" {
  count = var.create_dlq ? 1 : 0

  name                              = "${var.name}-dlq"
  message_retention_seconds         = var.dlq_message_retention_seconds
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = 300

  tags = local.tags
}

resource "aws_sqs_queue_policy" "dlq" {
  count = var.create_dlq ? 1 : 0

  queue_url = aws_sqs_queue.dlq[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "sqs:*"
        Resource  = aws_sqs_queue.dlq[0].arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}

################################################################################
# IAM
################################################################################

resource "aws_iam_role" "this" {
  name        = var.name
  description = "Execution role of the ${var.name} Lambda function"

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect    = "Allow"
        Principal = { Service = "lambda.amazonaws.com" }
        Action    = "sts:AssumeRole"
      },
    ]
  })

  tags = local.tags
}

locals {
  role_policy_statements = concat(
    [
      {
        # No logs:CreateLogGroup: the module owns the group, and nothing else may be written.
        Sid      = "WriteOwnLogGroup"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${local.log_group_arn}:*"]
      },
      {
        # X-Ray accepts no resource-level scoping for these actions.
        Sid      = "WriteXRayTraces"
        Effect   = "Allow"
        Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
        Resource = ["*"]
      },
      {
        Sid      = "SendToDeadLetterTarget"
        Effect   = "Allow"
        Action   = [local.dlq_send_action]
        Resource = [local.dlq_arn]
      },
      {
        # Decrypt the environment; encrypt data keys for the dead-letter queue.
        Sid      = "UseFunctionKey"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = [local.kms_key_arn]
      },
    ],
    length(var.secret_arns) > 0 ? [
      {
        Sid      = "ReadOwnSecrets"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = sort(distinct(values(var.secret_arns)))
      },
    ] : [],
    length(var.secrets_kms_key_arns) > 0 ? [
      {
        Sid      = "DecryptSecretsThroughSecretsManager"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = sort(distinct(var.secrets_kms_key_arns))
        Condition = {
          StringEquals = { "kms:ViaService" = "secretsmanager.${local.region}.amazonaws.com" }
        }
      },
    ] : [],
  )
}

resource "aws_iam_role_policy" "this" {
  name = "${var.name}-least-privilege"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.role_policy_statements
  })
}

# Only the network interface actions a VPC function needs. AWSLambdaVPCAccessExecutionRole would
# also grant logs:* writes on every log group of the account.
resource "aws_iam_role_policy_attachment" "eni" {
  role       = aws_iam_role.this.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaENIManagementAccess"
}

################################################################################
# Network
################################################################################

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-"
  description = "${var.name}: no ingress; egress to Redis, NATS and the listed destinations only"
  vpc_id      = var.vpc_id

  tags = merge(local.tags, { Name = var.name })

  lifecycle {
    create_before_destroy = true
  }
}

# Terraform removes the default allow-all egress rule of a new group, so these are the only ones.
resource "aws_vpc_security_group_egress_rule" "this" {
  for_each = local.egress_rules

  security_group_id = aws_security_group.this.id
  description       = "${each.value.description} (TCP ${each.value.port})"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr

  tags = local.tags
}

################################################################################
# Function
################################################################################

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_272:The function is uploaded as a local zip built by the project; code signing needs an AWS Signer job on an S3 object, which this deployment path does not use.
  function_name = var.name
  description   = var.description
  role          = aws_iam_role.this.arn

  filename         = var.package_path
  source_code_hash = filebase64sha256(var.package_path)
  handler          = var.handler
  runtime          = var.runtime
  architectures    = [var.architecture]
  layers           = var.layers
  publish          = var.publish

  memory_size                    = var.memory_size
  timeout                        = var.timeout
  reserved_concurrent_executions = var.reserved_concurrent_executions

  kms_key_arn = local.kms_key_arn

  environment {
    variables = local.environment_variables
  }

  tracing_config {
    mode = var.tracing_mode
  }

  dead_letter_config {
    target_arn = local.dlq_arn
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = concat([aws_security_group.this.id], var.security_group_ids)
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.this.name
  }

  tags = local.tags

  # The role must be able to write logs, create interfaces and reach the DLQ before the first
  # invocation, and the group must exist so Lambda never creates an unencrypted one.
  depends_on = [
    aws_cloudwatch_log_group.this,
    aws_iam_role_policy.this,
    aws_iam_role_policy_attachment.eni,
  ]
}

resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = aws_lambda_function.this.function_name
  maximum_retry_attempts       = var.maximum_retry_attempts
  maximum_event_age_in_seconds = var.maximum_event_age_in_seconds
}

################################################################################
# Checks (warnings, not errors)
################################################################################

check "production_uses_tls" {
  assert {
    condition = var.environment != "production" || (
      startswith(var.redis_url, "rediss://") && alltrue([for url in split(",", var.nats_url) : startswith(trimspace(url), "tls://")])
    )
    error_message = "Production should reach Redis over rediss:// and NATS over tls://."
  }
}
