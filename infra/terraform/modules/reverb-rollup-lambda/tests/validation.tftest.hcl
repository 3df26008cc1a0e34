# Every input validation rule rejects a bad value. Each run starts from the valid inputs below and
# breaks one rule of each variable it names; expect_failures fails the run if any of those
# variables is accepted or if any other check fails.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  package_path      = "./tests/fixtures/function.zip"
  cluster_id        = "dev"
  environment       = "development"
  redis_url         = "redis://redis.backbeat.internal:6379"
  nats_url          = "nats://nats.backbeat.internal:4222"
  vpc_id            = "vpc-0a1b2c3d4e5f60718"
  subnet_ids        = ["subnet-0a1b2c3d4e5f60718"]
  redis_cidr_blocks = ["10.20.0.0/24"]
  nats_cidr_blocks  = ["10.20.1.0/24"]
}

run "valid_inputs_plan" {
  command = plan
}

run "valid_vault_inputs_plan" {
  command = plan

  variables {
    secrets_backend   = "vault"
    vault_addr        = "https://vault.backbeat.internal:8200"
    vault_secret_path = "backbeat"
    vault_role_id     = "backbeat-reverb-rollup"
    secret_arns       = { vault_secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-secret-id-abcdef" }
  }
}

run "function_settings_below_range" {
  # Function settings out of range or of the wrong kind.
  command = plan

  variables {
    name                           = "1 not valid"
    description                    = join("", [for i in range(257) : "x"])
    handler                        = "reverb_rollup"
    runtime                        = "python3.10"
    architecture                   = "i386"
    memory_size                    = 127
    timeout                        = 0
    reserved_concurrent_executions = -2
    layers                         = ["arn:aws:lambda:eu-west-1:123456789012:function:not-a-layer"]
    tracing_mode                   = "Disabled"
    maximum_retry_attempts         = 3
    maximum_event_age_in_seconds   = 30
  }

  expect_failures = [
    var.name,
    var.description,
    var.handler,
    var.runtime,
    var.architecture,
    var.memory_size,
    var.timeout,
    var.reserved_concurrent_executions,
    var.layers,
    var.tracing_mode,
    var.maximum_retry_attempts,
    var.maximum_event_age_in_seconds,
  ]
}

run "function_settings_above_range" {
  # Upper bounds, a too short key deletion window, a retention CloudWatch does not offer.
  command = plan

  variables {
    name                            = join("", [for i in range(65) : "a"])
    memory_size                     = 10241
    timeout                         = 901
    kms_key_deletion_window_in_days = 5
    dlq_message_retention_seconds   = 1209601
    log_retention_in_days           = 2
  }

  expect_failures = [
    var.name,
    var.memory_size,
    var.timeout,
    var.kms_key_deletion_window_in_days,
    var.dlq_message_retention_seconds,
    var.log_retention_in_days,
  ]
}

run "package_path_must_be_a_zip" {
  command = plan

  variables {
    package_path = "./tests/mocks/aws.tfmock.hcl"
  }

  expect_failures = [
    var.package_path,
  ]
}

run "package_path_must_exist" {
  command = plan

  variables {
    package_path = "./tests/fixtures/missing.zip"
  }

  expect_failures = [
    var.package_path,
  ]
}

run "backbeat_settings_malformed" {
  # Cluster id, mode, log level and server URLs.
  command = plan

  variables {
    cluster_id            = "prod.eu"
    environment           = "staging"
    log_level             = "INFO"
    redis_url             = "http://redis.backbeat.internal:6379"
    nats_url              = "http://nats.backbeat.internal:4222"
    otel_environment      = { EXPORTER_ENDPOINT = "http://collector:4318" }
    otel_service_name     = ""
    log_retention_in_days = 0
    # Lambda reserves AWS_*.
    extra_environment_variables = { AWS_REGION = "eu-west-1" }
  }

  expect_failures = [
    var.cluster_id,
    var.environment,
    var.log_level,
    var.redis_url,
    var.nats_url,
    var.otel_environment,
    var.otel_service_name,
    var.log_retention_in_days,
    var.extra_environment_variables,
  ]
}

run "backbeat_settings_subtly_malformed" {
  # A cluster id one character too long, a URL without host, one bad server in a list, a managed
  # variable overridden.
  command = plan

  variables {
    cluster_id                  = join("", [for i in range(65) : "c"])
    redis_url                   = "redis://"
    nats_url                    = "nats://nats-1:4222,redis://nats-2:4222"
    extra_environment_variables = { REDIS_URL = "redis://other:6379" }
  }

  expect_failures = [
    var.cluster_id,
    var.redis_url,
    var.nats_url,
    var.extra_environment_variables,
  ]
}

run "credentials_in_urls_rejected" {
  # Passwords belong in Secrets Manager, never in the environment.
  command = plan

  variables {
    #checkov:skip=CKV_SECRET_4:Deliberately invalid input; the placeholder password proves such URLs are rejected.
    redis_url = "rediss://default:placeholder@redis.backbeat.internal:6379"
    nats_url  = "tls://backbeat:placeholder@nats.backbeat.internal:4222"
    #checkov:skip=CKV_SECRET_6:Deliberately invalid input; the placeholder proves secret-bearing names are refused.
    extra_environment_variables = { BACKBEAT_SECRET_API_TOKEN = "placeholder" }
  }

  expect_failures = [
    var.redis_url,
    var.nats_url,
    var.extra_environment_variables,
  ]
}

run "secret_settings_malformed" {
  # Secrets backend, secret references and their keys.
  command = plan

  variables {
    secrets_backend      = "ssm"
    secret_arns          = { "Redis-Password" = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/redis-AbCdEf" }
    secrets_kms_key_arns = ["alias/backbeat"]
    create_kms_key       = false
    kms_key_arn          = "alias/backbeat"
  }

  expect_failures = [
    var.secrets_backend,
    var.secret_arns,
    var.secrets_kms_key_arns,
    var.kms_key_arn,
  ]
}

run "secret_arns_values_are_secret_arns" {
  command = plan

  variables {
    secret_arns = { redis = "arn:aws:ssm:eu-west-1:123456789012:parameter/backbeat/redis" }
  }

  expect_failures = [
    var.secret_arns,
  ]
}

run "vault_settings_missing" {
  # The vault backend needs an address, a path and an AppRole role id; mounts and namespaces are paths.
  command = plan

  variables {
    secrets_backend     = "vault"
    vault_addr          = null
    vault_secret_path   = null
    vault_role_id       = null
    secret_arns         = { vault_secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-secret-id-abcdef" }
    vault_kv_mount      = "/secret"
    vault_approle_mount = "/approle"
    vault_namespace     = "team a"
  }

  expect_failures = [
    var.vault_addr,
    var.vault_secret_path,
    var.vault_kv_mount,
    var.vault_approle_mount,
    var.vault_namespace,
    var.vault_role_id,
  ]
}

run "vault_production_needs_https_and_secret_id" {
  # Plain HTTP to Vault in production; AppRole without its secret-id.
  command = plan

  variables {
    secrets_backend   = "vault"
    vault_addr        = "http://vault.backbeat.internal:8200"
    vault_secret_path = "backbeat"
    vault_role_id     = "backbeat-reverb-rollup"
    secret_arns       = {}
    environment       = "production"
    redis_url         = "rediss://redis.backbeat.internal:6379"
    nats_url          = "tls://nats.backbeat.internal:4222"
  }

  expect_failures = [
    var.vault_addr,
    var.vault_auth_method,
  ]
}

run "vault_token_needs_token_secret" {
  command = plan

  variables {
    secrets_backend   = "vault"
    vault_addr        = "https://vault.backbeat.internal:8200"
    vault_secret_path = "backbeat"
    vault_role_id     = "backbeat-reverb-rollup"
    secret_arns       = { vault_secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:backbeat/vault-secret-id-abcdef" }
    vault_auth_method = "token"
  }

  expect_failures = [
    var.vault_auth_method,
  ]
}

run "network_inputs_malformed" {
  # Ids, CIDR blocks and ports of the network, and an unknown Vault auth method.
  command = plan

  variables {
    vpc_id                  = "my-vpc"
    subnet_ids              = []
    security_group_ids      = ["default"]
    redis_cidr_blocks       = []
    redis_port              = 0
    nats_cidr_blocks        = ["nats.backbeat.internal"]
    nats_port               = 70000
    additional_egress_rules = { "Vault Servers" = { description = "Vault", port = 8200, cidr_blocks = ["10.20.5.0/28"] } }
    vault_auth_method       = "kubernetes"
  }

  expect_failures = [
    var.vpc_id,
    var.subnet_ids,
    var.security_group_ids,
    var.redis_cidr_blocks,
    var.redis_port,
    var.nats_cidr_blocks,
    var.nats_port,
    var.additional_egress_rules,
    var.vault_auth_method,
  ]
}

run "network_inputs_subtly_malformed" {
  # A malformed subnet id, a prefix length past 32, empty extra rules.
  command = plan

  variables {
    subnet_ids              = ["private-a"]
    redis_cidr_blocks       = ["10.20.0.0/33"]
    additional_egress_rules = { vault = { description = "Vault", port = 0, cidr_blocks = [] } }
  }

  expect_failures = [
    var.subnet_ids,
    var.redis_cidr_blocks,
    var.additional_egress_rules,
  ]
}

run "network_must_not_open_the_internet" {
  command = plan

  variables {
    redis_cidr_blocks = ["0.0.0.0/0"]
    nats_cidr_blocks  = ["10.20.1.0/24", "0.0.0.0/0"]
  }

  expect_failures = [
    var.redis_cidr_blocks,
    var.nats_cidr_blocks,
  ]
}

run "additional_egress_rule_names_reserved" {
  # "redis" and "nats" name the module's own rules.
  command = plan

  variables {
    additional_egress_rules = { redis = { description = "Redis replicas", port = 6380, cidr_blocks = ["10.20.3.0/24"] } }
  }

  expect_failures = [
    var.additional_egress_rules,
  ]
}

run "existing_targets_given_while_creating_own" {
  # An existing dead-letter target or key next to the ones the module creates.
  command = plan

  variables {
    dead_letter_target_arn = "arn:aws:sqs:eu-west-1:123456789012:other-dlq"
    kms_key_arn            = "arn:aws:kms:eu-west-1:123456789012:key/abcdefab-cdef-abcd-efab-cdefabcdefab"
  }

  expect_failures = [
    var.dead_letter_target_arn,
    var.kms_key_arn,
  ]
}

run "existing_targets_missing_when_not_creating_own" {
  # Neither a dead-letter target nor a key when the module is told not to create them.
  command = plan

  variables {
    create_dlq     = false
    create_kms_key = false
  }

  expect_failures = [
    var.dead_letter_target_arn,
    var.kms_key_arn,
  ]
}

run "dead_letter_target_is_sqs_or_sns" {
  command = plan

  variables {
    create_dlq             = false
    dead_letter_target_arn = "arn:aws:s3:::dead-letters"
  }

  expect_failures = [
    var.dead_letter_target_arn,
  ]
}
