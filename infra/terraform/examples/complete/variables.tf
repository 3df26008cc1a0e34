variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "package_path" {
  description = "Deployment zip built by `make lambda-package`. Defaults to build/reverb-rollup-lambda.zip at the repository root."
  type        = string
  default     = null
}

variable "cluster_id" {
  description = "BACKBEAT cluster id."
  type        = string
  default     = "prod-eu-1"
}

variable "vpc_id" {
  description = "VPC of the BACKBEAT servers."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets for the function, one per availability zone."
  type        = list(string)
}

variable "redis_url" {
  description = "Redis endpoint (rediss:// in production)."
  type        = string
}

variable "redis_cidr_blocks" {
  description = "CIDR blocks of the Redis servers."
  type        = list(string)
}

variable "nats_url" {
  description = "NATS servers, comma-separated (tls:// in production)."
  type        = string
}

variable "nats_cidr_blocks" {
  description = "CIDR blocks of the NATS servers."
  type        = list(string)
}

variable "vault_addr" {
  description = "HashiCorp Vault address."
  type        = string
}

variable "vault_cidr_blocks" {
  description = "CIDR blocks of the Vault servers."
  type        = list(string)
}

variable "vault_role_id" {
  description = "Role id of the rollup's Vault AppRole."
  type        = string
}

variable "vault_secret_id_arn" {
  description = "Secrets Manager secret holding the AppRole secret-id."
  type        = string
}

variable "secrets_kms_key_arn" {
  description = "Customer-managed key that encrypts the secret-id secret (null for the AWS managed key)."
  type        = string
  default     = null
}

variable "endpoint_cidr_blocks" {
  description = "CIDR blocks of the Secrets Manager interface endpoint (HTTPS)."
  type        = list(string)
}

variable "otel_collector_endpoint" {
  description = "OTLP/HTTP endpoint of the OpenTelemetry collector, e.g. http://10.0.8.10:4318."
  type        = string
}

variable "otel_collector_cidr_blocks" {
  description = "CIDR blocks of the OpenTelemetry collector."
  type        = list(string)
}

variable "alarm_actions" {
  description = "SNS topics notified when invocations end up in the dead-letter queue."
  type        = list(string)
  default     = []
}
