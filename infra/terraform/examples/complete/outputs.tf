output "function_name" {
  description = "Name of the rollup function."
  value       = module.reverb_rollup.function_name
}

output "function_arn" {
  description = "ARN of the rollup function; grant lambda:InvokeFunction on it to the trigger."
  value       = module.reverb_rollup.function_arn
}

output "function_invoke_arn" {
  description = "Invoke ARN of the rollup function."
  value       = module.reverb_rollup.function_invoke_arn
}

output "role_arn" {
  description = "Execution role of the function."
  value       = module.reverb_rollup.role_arn
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = module.reverb_rollup.log_group_name
}

output "dlq_arn" {
  description = "Dead-letter queue of failed invocations."
  value       = module.reverb_rollup.dlq_arn
}

output "security_group_id" {
  description = "Security group of the function; allow it as a source on the Redis, NATS and Vault groups."
  value       = module.reverb_rollup.security_group_id
}
