output "function_log_group_names" {
  description = "Log group name by function key."
  value       = { for k, g in aws_cloudwatch_log_group.function : k => g.name }
}

output "function_log_group_arns" {
  description = "Log group ARN by function key."
  value       = { for k, g in aws_cloudwatch_log_group.function : k => g.arn }
}

output "state_machine_log_group_arn" {
  description = "Log group ARN of the state machine."
  value       = aws_cloudwatch_log_group.state_machine.arn
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms publish to."
  value       = aws_sns_topic.alarms.arn
}

output "alarm_names" {
  description = "Names of all alarms."
  value = concat(
    [for a in aws_cloudwatch_metric_alarm.executions_failed : a.alarm_name],
    [for a in aws_cloudwatch_metric_alarm.lambda_errors : a.alarm_name],
  )
}
