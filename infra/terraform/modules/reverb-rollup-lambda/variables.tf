################################################################################
# Function
################################################################################

variable "name" {
  description = "Name of the Lambda function. Also names its IAM role, log group, security group, dead-letter queue and KMS alias."
  type        = string
  default     = "backbeat-reverb-rollup"

  validation {
    # 64 is the Lambda and IAM role limit; the queue adds a "-dlq" suffix (SQS allows 80).
    condition     = can(regex("^[A-Za-z][A-Za-z0-9_-]{0,63}$", var.name))
    error_message = "name must start with a letter and contain 1-64 letters, digits, hyphens or underscores."
  }
}

variable "description" {
  description = "Description of the Lambda function."
  type        = string
  default     = "BACKBEAT reverb rollup: builds exactly one BarReport per closed window."

  validation {
    condition     = length(var.description) <= 256
    error_message = "description must be at most 256 characters."
  }
}

variable "package_path" {
  description = "Path to the pre-built deployment zip (see `make lambda-package`). It must exist when Terraform plans."
  type        = string

  validation {
    condition     = endswith(lower(var.package_path), ".zip")
    error_message = "package_path must point to a .zip archive."
  }

  validation {
    condition     = fileexists(var.package_path)
    error_message = "package_path does not exist; build it first with `make lambda-package`."
  }
}

variable "handler" {
  description = "Python handler of the function."
  type        = string
  default     = "reverb_rollup.aws_lambda.handler"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_.]*\\.[A-Za-z_][A-Za-z0-9_]*$", var.handler))
    error_message = "handler must be a dotted Python path ending in a function name, e.g. reverb_rollup.aws_lambda.handler."
  }
}

variable "runtime" {
  description = "Lambda runtime. The project requires Python 3.11 or later."
  type        = string
  default     = "python3.11"

  validation {
    condition     = contains(["python3.11", "python3.12", "python3.13"], var.runtime)
    error_message = "runtime must be one of python3.11, python3.12, python3.13."
  }
}

variable "architecture" {
  description = "Instruction set of the function. Must match the platform the package's native wheels were built for."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_size" {
  description = "Memory in MB (CPU is allocated in proportion)."
  type        = number
  default     = 512

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout" {
  description = "Maximum run time of one invocation, in seconds."
  type        = number
  default     = 30

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 900 && floor(var.timeout) == var.timeout
    error_message = "timeout must be a whole number of seconds between 1 and 900."
  }
}

variable "reserved_concurrent_executions" {
  description = "Concurrency reserved for the function. -1 removes the limit, 0 stops all invocations."
  type        = number
  default     = 10

  validation {
    condition     = var.reserved_concurrent_executions >= -1 && floor(var.reserved_concurrent_executions) == var.reserved_concurrent_executions
    error_message = "reserved_concurrent_executions must be a whole number >= -1."
  }
}

variable "layers" {
  description = "Lambda layer version ARNs to attach (for example an OpenTelemetry collector layer). At most 5."
  type        = list(string)
  default     = []

  validation {
    condition = length(var.layers) <= 5 && alltrue([
      for arn in var.layers : can(regex("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:layer:[A-Za-z0-9_-]+:[0-9]+$", arn))
    ])
    error_message = "layers must hold at most 5 Lambda layer version ARNs."
  }
}

variable "publish" {
  description = "Publish a new function version on every change."
  type        = bool
  default     = false
}

variable "tracing_mode" {
  description = "X-Ray tracing mode."
  type        = string
  default     = "Active"

  validation {
    condition     = contains(["Active", "PassThrough"], var.tracing_mode)
    error_message = "tracing_mode must be Active or PassThrough."
  }
}

variable "maximum_retry_attempts" {
  description = "Retries of a failed asynchronous (Event) invocation before it goes to the dead-letter target."
  type        = number
  default     = 2

  validation {
    condition     = contains([0, 1, 2], var.maximum_retry_attempts)
    error_message = "maximum_retry_attempts must be 0, 1 or 2."
  }
}

variable "maximum_event_age_in_seconds" {
  description = "Age after which an unprocessed asynchronous invocation goes to the dead-letter target."
  type        = number
  default     = 3600

  validation {
    condition     = var.maximum_event_age_in_seconds >= 60 && var.maximum_event_age_in_seconds <= 21600
    error_message = "maximum_event_age_in_seconds must be between 60 and 21600."
  }
}

variable "tags" {
  description = "Tags applied to every resource the module creates."
  type        = map(string)
  default     = {}
}

################################################################################
# BACKBEAT configuration (function environment)
################################################################################

variable "cluster_id" {
  description = "BACKBEAT cluster id (BACKBEAT_CLUSTER). It becomes a NATS subject token and a Redis hash tag."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.cluster_id))
    error_message = "cluster_id must be 1-64 characters of letters, digits, '-' or '_'."
  }
}

variable "environment" {
  description = "BACKBEAT_ENV: development or production."
  type        = string
  default     = "production"

  validation {
    condition     = contains(["development", "production"], var.environment)
    error_message = "environment must be development or production."
  }
}

variable "log_level" {
  description = "LOG_LEVEL of the function: debug, info, warn or error."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warn", "error"], var.log_level)
    error_message = "log_level must be one of debug, info, warn, error."
  }
}

variable "redis_url" {
  description = "REDIS_URL: redis:// or rediss:// (TLS). The password is the secret redis_password, never part of the URL."
  type        = string

  validation {
    condition     = can(regex("^rediss?://[^\\s/?#]+", var.redis_url))
    error_message = "redis_url must start with redis:// or rediss:// and name a host."
  }

  validation {
    condition     = !can(regex("^[a-z]+://[^/@]*:[^/@]*@", var.redis_url))
    error_message = "redis_url must not embed a password; pass it as the secret redis_password (secret_arns or Vault)."
  }
}

variable "nats_url" {
  description = "NATS_URL: one or more comma-separated nats:// or tls:// server URLs. Credentials are the secret nats_credentials."
  type        = string

  validation {
    condition = alltrue([
      for url in split(",", var.nats_url) : can(regex("^(nats|tls)://[^\\s/?#]+$", trimspace(url)))
    ])
    error_message = "nats_url must be a comma-separated list of nats:// or tls:// server URLs."
  }

  validation {
    condition = alltrue([
      for url in split(",", var.nats_url) : !can(regex("^[a-z]+://[^/@]*:[^/@]*@", trimspace(url)))
    ])
    error_message = "nats_url must not embed credentials; pass them as the secret nats_credentials (secret_arns or Vault)."
  }
}

################################################################################
# Secrets
################################################################################

variable "secrets_backend" {
  description = "BACKBEAT_SECRETS_BACKEND: env (BACKBEAT secrets come from secret_arns) or vault (HashiCorp Vault KV v2)."
  type        = string
  default     = "env"

  validation {
    condition     = contains(["env", "vault"], var.secrets_backend)
    error_message = "secrets_backend must be env or vault."
  }
}

variable "secret_arns" {
  description = <<-EOT
    Secrets Manager secrets the function may read, by secret name. Passed to the function as the JSON
    object BACKBEAT_SECRET_ARNS; at cold start the function reads each one and exports it as
    BACKBEAT_SECRET_<NAME> (redis_password, nats_credentials, rollup_invoke_key, beat_signing_keys), or as
    VAULT_SECRET_ID / VAULT_TOKEN for the Vault credentials vault_secret_id / vault_token.
  EOT
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.secret_arns) : can(regex("^[a-z][a-z0-9_]{0,63}$", key))])
    error_message = "secret_arns keys must be lowercase snake_case names."
  }

  validation {
    condition = alltrue([
      for arn in values(var.secret_arns) : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$", arn))
    ])
    error_message = "secret_arns values must be Secrets Manager secret ARNs."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer-managed KMS keys that encrypt the secrets in secret_arns. The role may decrypt with them only through Secrets Manager."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.secrets_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", arn))])
    error_message = "secrets_kms_key_arns must hold KMS key ARNs (arn:...:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "vault_addr" {
  description = "VAULT_ADDR. Required when secrets_backend is vault."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_backend != "vault" || can(regex("^https?://[^\\s/]+", var.vault_addr))
    error_message = "vault_addr must be an http:// or https:// URL when secrets_backend is vault."
  }

  validation {
    condition     = !(var.secrets_backend == "vault" && var.environment == "production") || startswith(coalesce(var.vault_addr, "-"), "https://")
    error_message = "vault_addr must use https:// in production."
  }
}

variable "vault_kv_mount" {
  description = "VAULT_KV_MOUNT: mount point of the KV v2 secrets engine."
  type        = string
  default     = "secret"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-][A-Za-z0-9_./-]*$", var.vault_kv_mount))
    error_message = "vault_kv_mount must be a Vault mount path."
  }
}

variable "vault_secret_path" {
  description = "VAULT_SECRET_PATH: path of the BACKBEAT secrets inside the KV mount. Required when secrets_backend is vault."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_backend != "vault" || can(regex("^[A-Za-z0-9_-][A-Za-z0-9_./-]*$", var.vault_secret_path))
    error_message = "vault_secret_path must be a KV path (e.g. backbeat/prod) when secrets_backend is vault."
  }
}

variable "vault_auth_method" {
  description = "VAULT_AUTH_METHOD: token or approle."
  type        = string
  default     = "approle"

  validation {
    condition     = contains(["token", "approle"], var.vault_auth_method)
    error_message = "vault_auth_method must be token or approle."
  }

  validation {
    condition = var.secrets_backend != "vault" || (
      var.vault_auth_method == "approle" ? contains(keys(var.secret_arns), "vault_secret_id") : contains(keys(var.secret_arns), "vault_token")
    )
    error_message = "With the vault backend, secret_arns must hold vault_secret_id (approle) or vault_token (token)."
  }
}

variable "vault_namespace" {
  description = "VAULT_NAMESPACE (Vault Enterprise). Optional."
  type        = string
  default     = null

  validation {
    condition     = var.vault_namespace == null || can(regex("^[A-Za-z0-9_./-]+$", var.vault_namespace))
    error_message = "vault_namespace must be a Vault namespace path."
  }
}

variable "vault_approle_mount" {
  description = "VAULT_APPROLE_MOUNT: mount path of the AppRole auth method."
  type        = string
  default     = "approle"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-][A-Za-z0-9_./-]*$", var.vault_approle_mount))
    error_message = "vault_approle_mount must be a Vault mount path."
  }
}

variable "vault_role_id" {
  description = "VAULT_ROLE_ID of the AppRole. Required when secrets_backend is vault and vault_auth_method is approle."
  type        = string
  default     = null

  validation {
    condition     = !(var.secrets_backend == "vault" && var.vault_auth_method == "approle") || can(regex("^[A-Za-z0-9-]{1,128}$", var.vault_role_id))
    error_message = "vault_role_id is required for AppRole authentication with the vault backend."
  }
}

variable "extra_environment_variables" {
  description = <<-EOT
    Further non-secret settings, e.g. BACKBEAT_ROLLUP_LEASE_MS or BACKBEAT_SECRETS_REFRESH_S. They may
    not replace a variable the module manages, use Lambda's reserved AWS_* names, or carry a secret.
  EOT
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.extra_environment_variables) : can(regex("^[A-Z][A-Z0-9_]*$", key)) && !startswith(key, "AWS_") && !startswith(key, "OTEL_")])
    error_message = "extra_environment_variables keys must be upper-case names; AWS_* is reserved and OTEL_* belongs in otel_environment."
  }

  validation {
    condition = length(setintersection(keys(var.extra_environment_variables), [
      "BACKBEAT_CLUSTER", "BACKBEAT_ENV", "BACKBEAT_SECRETS_BACKEND", "BACKBEAT_SECRET_ARNS", "LOG_LEVEL", "REDIS_URL", "NATS_URL",
      "VAULT_ADDR", "VAULT_KV_MOUNT", "VAULT_SECRET_PATH", "VAULT_AUTH_METHOD", "VAULT_ROLE_ID", "VAULT_NAMESPACE", "VAULT_APPROLE_MOUNT",
    ])) == 0
    error_message = "extra_environment_variables must not replace a variable the module manages; use the matching input."
  }

  validation {
    condition = alltrue([
      for key in keys(var.extra_environment_variables) :
      !startswith(key, "BACKBEAT_SECRET_") && !contains(["VAULT_TOKEN", "VAULT_SECRET_ID"], key)
    ])
    error_message = "Secrets never go into the environment in plain text; reference them through secret_arns."
  }
}

################################################################################
# Tracing
################################################################################

variable "otel_service_name" {
  description = "OTEL_SERVICE_NAME reported by the function."
  type        = string
  default     = "backbeat-reverb-rollup"

  validation {
    condition     = length(var.otel_service_name) > 0
    error_message = "otel_service_name must not be empty."
  }
}

variable "otel_environment" {
  description = "Additional OTEL_* variables (exporter endpoint, protocol, sampler...). They override the module's defaults."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.otel_environment) : can(regex("^OTEL_[A-Z0-9_]+$", key))])
    error_message = "otel_environment keys must be OTEL_* variable names."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_id" {
  description = "VPC that holds the subnets and the Redis and NATS servers."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets the function runs in (at least one, preferably one per availability zone)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must hold at least one subnet."
  }

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "subnet_ids must hold subnet ids (subnet-...)."
  }
}

variable "security_group_ids" {
  description = "Existing security groups to attach in addition to the one the module creates."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.security_group_ids) <= 4 && alltrue([for id in var.security_group_ids : can(regex("^sg-[0-9a-f]{8,17}$", id))])
    error_message = "security_group_ids must hold at most 4 security group ids (sg-...)."
  }
}

variable "redis_cidr_blocks" {
  description = "IPv4 CIDR blocks of the Redis servers; the function may open connections to them on redis_port only."
  type        = list(string)

  validation {
    condition     = length(var.redis_cidr_blocks) > 0 && alltrue([for cidr in var.redis_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "redis_cidr_blocks must hold at least one IPv4 CIDR block."
  }

  validation {
    condition     = !contains(var.redis_cidr_blocks, "0.0.0.0/0")
    error_message = "redis_cidr_blocks must not open the whole internet (0.0.0.0/0)."
  }
}

variable "redis_port" {
  description = "TCP port of the Redis servers."
  type        = number
  default     = 6379

  validation {
    condition     = var.redis_port >= 1 && var.redis_port <= 65535 && floor(var.redis_port) == var.redis_port
    error_message = "redis_port must be a TCP port (1-65535)."
  }
}

variable "nats_cidr_blocks" {
  description = "IPv4 CIDR blocks of the NATS servers; the function may open connections to them on nats_port only."
  type        = list(string)

  validation {
    condition     = length(var.nats_cidr_blocks) > 0 && alltrue([for cidr in var.nats_cidr_blocks : can(cidrnetmask(cidr))])
    error_message = "nats_cidr_blocks must hold at least one IPv4 CIDR block."
  }

  validation {
    condition     = !contains(var.nats_cidr_blocks, "0.0.0.0/0")
    error_message = "nats_cidr_blocks must not open the whole internet (0.0.0.0/0)."
  }
}

variable "nats_port" {
  description = "TCP port of the NATS servers."
  type        = number
  default     = 4222

  validation {
    condition     = var.nats_port >= 1 && var.nats_port <= 65535 && floor(var.nats_port) == var.nats_port
    error_message = "nats_port must be a TCP port (1-65535)."
  }
}

variable "additional_egress_rules" {
  description = <<-EOT
    Further TCP destinations the function may reach, e.g. Vault (8200), an OTLP collector (4317/4318)
    or the HTTPS interface endpoint of Secrets Manager (443). The map key names the rule.
  EOT
  type = map(object({
    description = string
    port        = number
    cidr_blocks = list(string)
  }))
  default = {}

  validation {
    condition     = alltrue([for key in keys(var.additional_egress_rules) : can(regex("^[a-z][a-z0-9-]{0,31}$", key)) && !contains(["redis", "nats"], key)])
    error_message = "additional_egress_rules keys must be short lowercase names (letters, digits, hyphens) other than redis and nats."
  }

  validation {
    condition = alltrue([
      for rule in values(var.additional_egress_rules) :
      rule.port >= 1 && rule.port <= 65535 && length(rule.cidr_blocks) > 0 && alltrue([for cidr in rule.cidr_blocks : can(cidrnetmask(cidr))])
    ])
    error_message = "Every additional egress rule needs a TCP port (1-65535) and at least one IPv4 CIDR block."
  }
}

################################################################################
# Logs, dead letters, encryption
################################################################################

variable "log_retention_in_days" {
  description = "Retention of the function's CloudWatch log group."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "log_retention_in_days must be one of the values CloudWatch Logs accepts: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "create_dlq" {
  description = "Create an encrypted SQS dead-letter queue for failed asynchronous invocations. Set to false to use dead_letter_target_arn."
  type        = bool
  default     = true
}

variable "dead_letter_target_arn" {
  description = "Existing SQS queue or SNS topic that receives failed asynchronous invocations when create_dlq is false."
  type        = string
  default     = null

  validation {
    condition     = var.create_dlq == (var.dead_letter_target_arn == null)
    error_message = "Set dead_letter_target_arn exactly when create_dlq is false."
  }

  validation {
    condition     = var.dead_letter_target_arn == null || can(regex("^arn:aws[a-z-]*:(sqs|sns):[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]+$", var.dead_letter_target_arn))
    error_message = "dead_letter_target_arn must be an SQS queue or SNS topic ARN."
  }
}

variable "dlq_message_retention_seconds" {
  description = "How long the module's dead-letter queue keeps a message."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_seconds >= 60 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "create_kms_key" {
  description = "Create a dedicated customer-managed KMS key (rotation enabled) for the environment variables, the log group and the dead-letter queue. Set to false to use kms_key_arn."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = <<-EOT
    Existing customer-managed KMS key used when create_kms_key is false. Its key policy must let
    CloudWatch Logs use it for this function's log group.
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.create_kms_key == (var.kms_key_arn == null)
    error_message = "Set kms_key_arn exactly when create_kms_key is false."
  }

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:...:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "kms_key_deletion_window_in_days" {
  description = "Waiting period before the module's KMS key is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_in_days >= 7 && var.kms_key_deletion_window_in_days <= 30
    error_message = "kms_key_deletion_window_in_days must be between 7 and 30."
  }
}
