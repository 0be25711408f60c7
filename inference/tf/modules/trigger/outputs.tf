output "function_name" {
  description = "The trigger function."
  value       = aws_lambda_function.trigger.function_name
}

output "function_arn" {
  description = "The trigger function's ARN (the rule's target)."
  value       = aws_lambda_function.trigger.arn
}

output "handler" {
  description = "image_config.command of the trigger function."
  value       = aws_lambda_function.trigger.image_config[0].command
}

output "environment" {
  description = "The trigger function's environment."
  value       = aws_lambda_function.trigger.environment[0].variables
}

output "architectures" {
  description = "The trigger function's instruction set (the image's, lambda_architecture)."
  value       = aws_lambda_function.trigger.architectures
}

output "vpc_configured" {
  description = "Whether the function has a VPC config (it should not: it touches no data)."
  value       = length(aws_lambda_function.trigger.vpc_config) > 0
}

output "role_arn" {
  description = "The trigger's execution role (named in the key policy); no wait on its policy."
  value       = aws_iam_role.trigger.arn
}

output "role_policy" {
  description = "The trigger role's only policy (JSON)."
  value       = aws_iam_role_policy.trigger.policy
}

output "rule_arn" {
  description = "The EventBridge rule on the data bucket's Object Created events."
  value       = aws_cloudwatch_event_rule.object_created.arn
}

output "event_pattern" {
  description = "The rule's event pattern (JSON)."
  value       = aws_cloudwatch_event_rule.object_created.event_pattern
}

output "rule_target_arn" {
  description = "What the rule invokes."
  value       = aws_cloudwatch_event_target.trigger.arn
}

output "eventbridge_notifications" {
  description = "Whether the data bucket sends its events to EventBridge."
  value       = aws_s3_bucket_notification.eventbridge.eventbridge
}

output "dead_letter_queue_arn" {
  description = "Where undeliverable events go."
  value       = aws_sqs_queue.dead_letters.arn
}

output "alarm_names" {
  description = "The trigger's alarms."
  value       = [for alarm in aws_cloudwatch_metric_alarm.trigger : alarm.alarm_name]
}
