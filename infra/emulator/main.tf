# The reverb-rollup-lambda module applied against a local AWS API emulator (moto_server), by
# infra/emulator/apply_check.py (`make infra-check`): a VPC with two private subnets, a secret
# for the function to read, and the module with everything it creates itself (KMS key, log
# group, dead-letter queue, role, security group, function). Never point this at real AWS.

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.75, < 6.0"
    }
  }
}

variable "endpoint" {
  description = "URL of the emulator, e.g. http://127.0.0.1:5000."
  type        = string
}

variable "package_path" {
  description = "The function's zip (infra/terraform/package_lambda.py)."
  type        = string
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "emulator"
  secret_key                  = "emulator"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true

  endpoints {
    ec2            = var.endpoint
    iam            = var.endpoint
    kms            = var.endpoint
    lambda         = var.endpoint
    logs           = var.endpoint
    secretsmanager = var.endpoint
    sqs            = var.endpoint
    sts            = var.endpoint
  }
}

resource "aws_vpc" "this" {
  cidr_block = "10.42.0.0/16"
}

resource "aws_subnet" "private" {
  for_each = { a = "10.42.1.0/24", b = "10.42.2.0/24" }

  vpc_id            = aws_vpc.this.id
  cidr_block        = each.value
  availability_zone = "us-east-1${each.key}"
}

resource "aws_secretsmanager_secret" "vault_secret_id" {
  name = "backbeat-emulator-vault-secret-id"
}

module "reverb_rollup" {
  source = "../terraform/modules/reverb-rollup-lambda"

  name         = "backbeat-emulator-reverb-rollup"
  package_path = var.package_path
  cluster_id   = "emulator"
  environment  = "production"
  redis_url    = "rediss://redis.internal:6379/0"
  nats_url     = "tls://nats.internal:4222"

  secrets_backend   = "vault"
  vault_addr        = "https://vault.internal:8200"
  vault_kv_mount    = "secret"
  vault_secret_path = "backbeat/emulator"
  vault_auth_method = "approle"
  vault_role_id     = "emulator-role"
  secret_arns       = { vault_secret_id = aws_secretsmanager_secret.vault_secret_id.arn }

  vpc_id            = aws_vpc.this.id
  subnet_ids        = [for s in aws_subnet.private : s.id]
  redis_cidr_blocks = ["10.42.10.0/24"]
  nats_cidr_blocks  = ["10.42.11.0/24"]
}

output "function_name" {
  value = module.reverb_rollup.function_name
}

output "role_name" {
  value = module.reverb_rollup.role_name
}

output "dlq_name" {
  value = module.reverb_rollup.dlq_name
}

output "subnet_ids" {
  value = sort([for s in aws_subnet.private : s.id])
}

output "kms_key_arn" {
  value = module.reverb_rollup.kms_key_arn
}

output "security_group_id" {
  value = module.reverb_rollup.security_group_id
}

output "log_group_name" {
  value = module.reverb_rollup.log_group_name
}
