output "arns" {
  description = "Function ARN by key."
  value       = { for k, f in aws_lambda_function.this : k => f.arn }
}

output "names" {
  description = "Function name by key."
  value       = { for k, f in aws_lambda_function.this : k => f.function_name }
}

output "settings" {
  description = "Memory (MB) and timeout (s) as deployed, by key."
  value       = { for k, f in aws_lambda_function.this : k => { memory_mb = f.memory_size, timeout_s = f.timeout } }
}

output "environments" {
  description = "Environment variables by key, as deployed."
  value       = { for k, f in aws_lambda_function.this : k => f.environment[0].variables }
}

output "handlers" {
  description = "image_config.command by key."
  value       = { for k, f in aws_lambda_function.this : k => f.image_config[0].command }
}

output "vpc_subnet_ids" {
  description = "Subnets of each function's VPC config, by key."
  value       = { for k, f in aws_lambda_function.this : k => f.vpc_config[0].subnet_ids }
}

output "architectures" {
  description = "Instruction sets of each function (lambda_architecture), by key."
  value       = { for k, f in aws_lambda_function.this : k => f.architectures }
}
