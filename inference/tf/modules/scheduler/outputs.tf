output "arn" {
  description = "Schedule ARN."
  value       = aws_scheduler_schedule.this.arn
}

output "role_arn" {
  description = "The scheduler's role (states:StartExecution only)."
  value       = aws_iam_role.this.arn
}

output "target_arn" {
  description = "What the schedule starts (the state machine ARN)."
  value       = aws_scheduler_schedule.this.target[0].arn
}

output "role_policy" {
  description = "The scheduler role's only policy (JSON)."
  value       = aws_iam_role_policy.this.policy
}
