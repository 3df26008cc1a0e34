# Optional features: the Vault backend, an external dead-letter target and KMS key, extra egress.

mock_provider "aws" {
  source          = "./tests/mocks"
  override_during = plan
}

variables {
  package_path      = "./tests/fixtures/function.zip"
  cluster_id        = "staging"
  environment       = "development"
  redis_url         = "redis://10.30.0.10:6379"
  nats_url          = "nats://10.30.1.10:4222"
  vpc_id            = "vpc-0a1b2c3d4e5f60718"
  subnet_ids        = ["subnet-0a1b2c3d4e5f60718"]
  redis_cidr_blocks = ["10.30.0.0/24"]
  nats_cidr_blocks  = ["10.30.1.0/24"]
}

run "vault_approle_backend" {
  command = plan

  variables {
    log_level                   = "debug"
    vault_namespace             = "platform"
    extra_environment_variables = { BACKBEAT_ROLLUP_LEASE_MS = "600" }
    secrets_backend             = "vault"
    vault_addr                  = "https://vault.backbeat.internal:8200"
    vault_secret_path           = "staging"
    vault_role_id               = "backbeat-reverb-rollup"
    secret_arns = {
      vault_secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-secret-id-abcdef"
    }
    secrets_kms_key_arns = ["arn:aws:kms:eu-west-1:123456789012:key/99999999-8888-7777-6666-555555555555"]
    additional_egress_rules = {
      vault = { description = "Vault", port = 8200, cidr_blocks = ["10.30.5.0/28"] }
      https = { description = "Interface endpoints", port = 443, cidr_blocks = ["10.30.6.0/28", "10.30.7.0/28"] }
    }
  }

  assert {
    condition = {
      for key, value in aws_lambda_function.this.environment[0].variables : key => value if startswith(key, "VAULT_") || key == "BACKBEAT_SECRETS_BACKEND"
      } == {
      BACKBEAT_SECRETS_BACKEND = "vault"
      VAULT_ADDR               = "https://vault.backbeat.internal:8200"
      VAULT_KV_MOUNT           = "secret"
      VAULT_SECRET_PATH        = "staging"
      VAULT_AUTH_METHOD        = "approle"
      VAULT_ROLE_ID            = "backbeat-reverb-rollup"
      VAULT_APPROLE_MOUNT      = "approle"
      VAULT_NAMESPACE          = "platform"
    }
    error_message = "The Vault backend must be configured through VAULT_* variables."
  }

  assert {
    condition     = aws_lambda_function.this.environment[0].variables["BACKBEAT_ENV"] == "development" && aws_lambda_function.this.environment[0].variables["LOG_LEVEL"] == "debug"
    error_message = "BACKBEAT_ENV and LOG_LEVEL must follow the inputs."
  }

  assert {
    condition     = aws_lambda_function.this.environment[0].variables["BACKBEAT_ROLLUP_LEASE_MS"] == "600"
    error_message = "Extra settings must reach the environment."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "DecryptSecretsThroughSecretsManager"
      ]) == {
      Sid       = "DecryptSecretsThroughSecretsManager"
      Effect    = "Allow"
      Action    = ["kms:Decrypt"]
      Resource  = ["arn:aws:kms:eu-west-1:123456789012:key/99999999-8888-7777-6666-555555555555"]
      Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.eu-west-1.amazonaws.com" } }
    }
    error_message = "Secret keys may be used through Secrets Manager only."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Resource if s.Sid == "ReadOwnSecrets"
    ]) == ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-secret-id-abcdef"]
    error_message = "The role may read the AppRole secret-id only."
  }

  assert {
    condition = toset(keys(aws_vpc_security_group_egress_rule.this)) == toset([
      "redis-10.30.0.0/24", "nats-10.30.1.0/24", "vault-10.30.5.0/28", "https-10.30.6.0/28", "https-10.30.7.0/28",
    ])
    error_message = "Additional egress rules must add one rule per CIDR block."
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.this["vault-10.30.5.0/28"].from_port == 8200 && aws_vpc_security_group_egress_rule.this["https-10.30.7.0/28"].to_port == 443
    error_message = "Additional egress rules must keep their ports."
  }
}

run "vault_token_backend" {
  command = plan

  variables {
    secrets_backend   = "vault"
    vault_auth_method = "token"
    vault_addr        = "https://vault.backbeat.internal:8200"
    vault_kv_mount    = "kv"
    vault_secret_path = "rollup"
    secret_arns = {
      vault_token = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-token-abcdef"
    }
  }

  assert {
    condition     = length(setintersection(keys(aws_lambda_function.this.environment[0].variables), ["VAULT_ROLE_ID", "VAULT_APPROLE_MOUNT", "VAULT_NAMESPACE"])) == 0
    error_message = "Token authentication needs no role id or AppRole mount, and no namespace was given."
  }

  assert {
    condition     = aws_lambda_function.this.environment[0].variables["VAULT_AUTH_METHOD"] == "token" && aws_lambda_function.this.environment[0].variables["VAULT_KV_MOUNT"] == "kv"
    error_message = "Unexpected Vault settings."
  }
}

run "external_dead_letter_topic_and_key" {
  command = plan

  variables {
    create_dlq                     = false
    dead_letter_target_arn         = "arn:aws:sns:eu-west-1:123456789012:backbeat-dead-letters"
    create_kms_key                 = false
    kms_key_arn                    = "arn:aws:kms:eu-west-1:123456789012:key/abcdefab-cdef-abcd-efab-cdefabcdefab"
    security_group_ids             = ["sg-0fedcba9876543210"]
    reserved_concurrent_executions = -1
    log_retention_in_days          = 30
    architecture                   = "arm64"
    memory_size                    = 1024
    timeout                        = 60
  }

  assert {
    condition     = length(aws_sqs_queue.dlq) == 0 && length(aws_kms_key.this) == 0 && length(aws_kms_alias.this) == 0
    error_message = "No queue or key may be created when both are given."
  }

  assert {
    condition     = aws_lambda_function.this.dead_letter_config[0].target_arn == "arn:aws:sns:eu-west-1:123456789012:backbeat-dead-letters"
    error_message = "The external dead-letter target must be used."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "SendToDeadLetterTarget"
    ]).Action == ["sns:Publish"]
    error_message = "An SNS dead-letter target needs sns:Publish only."
  }

  assert {
    condition = aws_lambda_function.this.kms_key_arn == "arn:aws:kms:eu-west-1:123456789012:key/abcdefab-cdef-abcd-efab-cdefabcdefab" && (
      aws_cloudwatch_log_group.this.kms_key_id == "arn:aws:kms:eu-west-1:123456789012:key/abcdefab-cdef-abcd-efab-cdefabcdefab"
    )
    error_message = "The given key must encrypt the environment and the logs."
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Resource if s.Sid == "UseFunctionKey"
    ]) == ["arn:aws:kms:eu-west-1:123456789012:key/abcdefab-cdef-abcd-efab-cdefabcdefab"]
    error_message = "The role may use the given key only."
  }

  assert {
    condition     = !contains([for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s.Sid], "ReadOwnSecrets")
    error_message = "Without secret_arns the role must not read any secret."
  }

  assert {
    condition     = toset(aws_lambda_function.this.vpc_config[0].security_group_ids) == toset(["sg-0123456789abcdef0", "sg-0fedcba9876543210"])
    error_message = "Extra security groups must be attached next to the module's."
  }

  assert {
    condition = (
      aws_lambda_function.this.reserved_concurrent_executions == -1 &&
      aws_cloudwatch_log_group.this.retention_in_days == 30 &&
      aws_lambda_function.this.architectures == tolist(["arm64"]) &&
      aws_lambda_function.this.memory_size == 1024 &&
      aws_lambda_function.this.timeout == 60
    )
    error_message = "Sizing inputs must reach the function."
  }

  assert {
    condition     = output.dlq_url == null && output.dlq_arn == "arn:aws:sns:eu-west-1:123456789012:backbeat-dead-letters"
    error_message = "Outputs must describe the external dead-letter target."
  }
}

run "external_dead_letter_queue" {
  command = plan

  variables {
    create_dlq             = false
    dead_letter_target_arn = "arn:aws:sqs:eu-west-1:123456789012:shared-dead-letters"
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.this.policy).Statement : s if s.Sid == "SendToDeadLetterTarget"
      ]) == {
      Sid      = "SendToDeadLetterTarget"
      Effect   = "Allow"
      Action   = ["sqs:SendMessage"]
      Resource = ["arn:aws:sqs:eu-west-1:123456789012:shared-dead-letters"]
    }
    error_message = "An SQS dead-letter target needs sqs:SendMessage on that queue only."
  }
}

run "plaintext_transport_in_production_is_flagged" {
  command = plan

  variables {
    environment = "production"
  }

  expect_failures = [check.production_uses_tls]
}
