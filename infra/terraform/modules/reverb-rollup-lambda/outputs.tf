output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "function_invoke_arn" {
  description = "ARN for invoking the function from API Gateway or Step Functions."
  value       = aws_lambda_function.this.invoke_arn
}

output "function_qualified_arn" {
  description = "ARN of the latest published version (equals function_arn with :$LATEST when publish is false)."
  value       = aws_lambda_function.this.qualified_arn
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.this.arn
}

output "role_name" {
  description = "Name of the function's execution role."
  value       = aws_iam_role.this.name
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of the CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.this.arn
}

output "dlq_arn" {
  description = "ARN of the dead-letter target (the module's queue or dead_letter_target_arn)."
  value       = local.dlq_arn
}

output "dlq_name" {
  description = "Name of the module's dead-letter queue, null when an external target is used."
  value       = var.create_dlq ? aws_sqs_queue.dlq[0].name : null
}

output "dlq_url" {
  description = "URL of the module's dead-letter queue, null when an external target is used."
  value       = var.create_dlq ? aws_sqs_queue.dlq[0].url : null
}

output "security_group_id" {
  description = "Security group of the function's network interfaces."
  value       = aws_security_group.this.id
}

output "kms_key_arn" {
  description = "KMS key that encrypts the environment, the logs and the dead-letter queue."
  value       = local.kms_key_arn
}

output "environment_variables" {
  description = "Environment the function receives (holds no secret values, only references)."
  value       = local.environment_variables
}
