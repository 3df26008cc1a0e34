# A valid configuration plans with the expected function, environment, logs and permissions.

mock_provider "aws" {
  source          = "./tests/mocks"
  override_during = plan
}

variables {
  package_path      = "./tests/fixtures/function.zip"
  cluster_id        = "prod-eu-1"
  redis_url         = "rediss://redis.backbeat.internal:6379/0"
  nats_url          = "tls://nats-1.backbeat.internal:4222, tls://nats-2.backbeat.internal:4222"
  vpc_id            = "vpc-0a1b2c3d4e5f60718"
  subnet_ids        = ["subnet-0a1b2c3d4e5f60718", "subnet-1a1b2c3d4e5f60718"]
  redis_cidr_blocks = ["10.20.0.0/24"]
  nats_cidr_blocks  = ["10.20.1.0/24", "10.20.2.0/24"]
  secret_arns = {
    redis_password   = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/redis-AbCdEf"
    nats_credentials = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/nats-GhIjKl"
  }
  otel_environment = {
    OTEL_EXPORTER_OTLP_ENDPOINT = "http://otel-collector.backbeat.internal:4318"
  }
}

run "function_settings" {
  command = plan

  assert {
    condition     = aws_lambda_function.this.function_name == "backbeat-reverb-rollup"
    error_message = "Unexpected function name."
  }

  assert {
    condition     = aws_lambda_function.this.handler == "reverb_rollup.aws_lambda.handler" && aws_lambda_function.this.runtime == "python3.11"
    error_message = "The function must run reverb_rollup.aws_lambda.handler on python3.11."
  }

  assert {
    condition     = aws_lambda_function.this.architectures == tolist(["x86_64"])
    error_message = "Default architecture must be x86_64."
  }

  assert {
    condition     = aws_lambda_function.this.memory_size == 512 && aws_lambda_function.this.timeout == 30
    error_message = "Unexpected default memory size or timeout."
  }

  assert {
    condition     = aws_lambda_function.this.reserved_concurrent_executions == 10
    error_message = "Reserved concurrency must default to 10."
  }

  assert {
    condition     = aws_lambda_function.this.tracing_config[0].mode == "Active"
    error_message = "X-Ray tracing must be Active."
  }

  assert {
    condition     = aws_lambda_function.this.source_code_hash == filebase64sha256("./tests/fixtures/function.zip")
    error_message = "source_code_hash must follow the package so code changes are deployed."
  }

  assert {
    condition     = aws_lambda_function.this.kms_key_arn == aws_kms_key.this[0].arn
    error_message = "The environment must be encrypted with the module's key."
  }

  assert {
    condition     = aws_lambda_function.this.dead_letter_config[0].target_arn == aws_sqs_queue.dlq[0].arn
    error_message = "Failed invocations must go to the module's dead-letter queue."
  }

  assert {
    condition     = toset(aws_lambda_function.this.vpc_config[0].subnet_ids) == toset(var.subnet_ids)
    error_message = "The function must run in the given subnets."
  }

  assert {
    condition     = toset(aws_lambda_function.this.vpc_config[0].security_group_ids) == toset([aws_security_group.this.id])
    error_message = "The function must use only the module's security group by default."
  }

  assert {
    condition     = aws_lambda_function.this.logging_config[0].log_group == "/aws/lambda/backbeat-reverb-rollup"
    error_message = "The function must log to the module's log group."
  }

  assert {
    condition     = aws_lambda_function_event_invoke_config.this.maximum_retry_attempts == 2
    error_message = "Asynchronous retries must default to 2."
  }
}

run "environment_variables" {
  command = plan

  assert {
    condition = aws_lambda_function.this.environment[0].variables == tomap({
      BACKBEAT_CLUSTER            = "prod-eu-1"
      BACKBEAT_ENV                = "production"
      BACKBEAT_SECRETS_BACKEND    = "env"
      LOG_LEVEL                   = "info"
      REDIS_URL                   = "rediss://redis.backbeat.internal:6379/0"
      NATS_URL                    = "tls://nats-1.backbeat.internal:4222,tls://nats-2.backbeat.internal:4222"
      BACKBEAT_SECRET_ARNS        = jsonencode(var.secret_arns)
      OTEL_SERVICE_NAME           = "backbeat-reverb-rollup"
      OTEL_RESOURCE_ATTRIBUTES    = "service.namespace=backbeat,deployment.environment=production,backbeat.cluster=prod-eu-1"
      OTEL_EXPORTER_OTLP_ENDPOINT = "http://otel-collector.backbeat.internal:4318"
    })
    error_message = "Unexpected function environment."
  }

  assert {
    condition     = tomap(jsondecode(aws_lambda_function.this.environment[0].variables["BACKBEAT_SECRET_ARNS"])) == var.secret_arns
    error_message = "BACKBEAT_SECRET_ARNS must be a JSON object of secret ARNs by role."
  }

  assert {
    condition     = alltrue([for key in keys(aws_lambda_function.this.environment[0].variables) : !startswith(key, "VAULT_")])
    error_message = "The env backend must not configure Vault."
  }
}

run "log_group" {
  command = plan

  assert {
    condition     = aws_cloudwatch_log_group.this.name == "/aws/lambda/backbeat-reverb-rollup"
    error_message = "Unexpected log group name."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.retention_in_days == 365
    error_message = "Log retention must default to 365 days."
  }

  assert {
    condition     = aws_cloudwatch_log_group.this.kms_key_id == aws_kms_key.this[0].arn
    error_message = "The log group must be encrypted with the module's key."
  }
}

run "encryption_and_dead_letters" {
  command = plan

  assert {
    condition     = aws_kms_key.this[0].enable_key_rotation
    error_message = "Key rotation must be enabled."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_kms_key.this[0].policy).Statement : s.Condition.ArnEquals["kms:EncryptionContext:aws:logs:arn"]
      if s.Sid == "CloudWatchLogsForThisLogGroup"
    ]) == "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/backbeat-reverb-rollup"
    error_message = "CloudWatch Logs may use the key for this log group only."
  }

  assert {
    condition     = aws_sqs_queue.dlq[0].name == "backbeat-reverb-rollup-dlq" && aws_sqs_queue.dlq[0].kms_master_key_id == aws_kms_key.this[0].arn
    error_message = "The dead-letter queue must be KMS encrypted."
  }

  assert {
    condition     = jsondecode(aws_sqs_queue_policy.dlq[0].policy).Statement[0].Condition.Bool["aws:SecureTransport"] == "false"
    error_message = "The dead-letter queue must refuse plaintext transport."
  }
}

run "iam_policy_scope" {
  command = plan

  assert {
    condition     = jsondecode(aws_iam_role.this.assume_role_policy).Statement[0].Principal.Service == "lambda.amazonaws.com"
    error_message = "Only Lambda may assume the role."
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Sid => s.Resource
      } == {
      WriteOwnLogGroup       = ["arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/backbeat-reverb-rollup:*"]
      WriteXRayTraces        = ["*"]
      SendToDeadLetterTarget = ["arn:aws:sqs:eu-west-1:123456789012:backbeat-reverb-rollup-dlq"]
      UseFunctionKey         = ["arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
      ReadOwnSecrets = [
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/nats-GhIjKl",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/redis-AbCdEf",
      ]
    }
    error_message = "Every statement must be scoped to the function's own resources."
  }

  assert {
    condition = {
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Sid => s.Action
      } == {
      WriteOwnLogGroup       = ["logs:CreateLogStream", "logs:PutLogEvents"]
      WriteXRayTraces        = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      SendToDeadLetterTarget = ["sqs:SendMessage"]
      UseFunctionKey         = ["kms:Decrypt", "kms:GenerateDataKey"]
      ReadOwnSecrets         = ["secretsmanager:GetSecretValue"]
    }
    error_message = "Unexpected actions in the role policy."
  }

  assert {
    condition     = alltrue([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Effect == "Allow" && !contains(s.Action, "*") && alltrue([for a in s.Action : !endswith(a, ":*")])])
    error_message = "The role policy must not grant wildcard actions."
  }

  assert {
    condition     = endswith(aws_iam_role_policy_attachment.eni.policy_arn, ":iam::aws:policy/service-role/AWSLambdaENIManagementAccess")
    error_message = "The role must get the network interface permissions only."
  }
}

run "security_group_egress" {
  command = plan

  assert {
    condition     = length(aws_vpc_security_group_egress_rule.this) == 3
    error_message = "Expected one egress rule per Redis and NATS CIDR block."
  }

  assert {
    condition = {
      for key, rule in aws_vpc_security_group_egress_rule.this : key => [rule.cidr_ipv4, rule.from_port, rule.to_port, rule.ip_protocol]
      } == {
      "redis-10.20.0.0/24" = ["10.20.0.0/24", 6379, 6379, "tcp"]
      "nats-10.20.1.0/24"  = ["10.20.1.0/24", 4222, 4222, "tcp"]
      "nats-10.20.2.0/24"  = ["10.20.2.0/24", 4222, 4222, "tcp"]
    }
    error_message = "Egress must be limited to the Redis and NATS ports and CIDR blocks."
  }

  assert {
    condition     = aws_security_group.this.vpc_id == "vpc-0a1b2c3d4e5f60718" && length(aws_security_group.this.ingress) == 0
    error_message = "The security group must live in the given VPC and allow no ingress."
  }
}

run "outputs" {
  command = plan

  assert {
    condition     = output.dlq_arn == "arn:aws:sqs:eu-west-1:123456789012:backbeat-reverb-rollup-dlq"
    error_message = "dlq_arn must be the module's queue."
  }

  assert {
    condition     = output.security_group_id == "sg-0123456789abcdef0" && output.log_group_name == "/aws/lambda/backbeat-reverb-rollup"
    error_message = "Unexpected security group or log group output."
  }

  assert {
    condition     = output.function_arn == "arn:aws:lambda:eu-west-1:123456789012:function:backbeat-reverb-rollup"
    error_message = "Unexpected function ARN output."
  }
}
