output "arn" {
  description = "State machine ARN."
  value       = aws_sfn_state_machine.this.arn
}

output "name" {
  description = "State machine name."
  value       = aws_sfn_state_machine.this.name
}

output "definition" {
  description = "The deployed ASL (the template with ARNs substituted)."
  value       = aws_sfn_state_machine.this.definition
}

output "role_policy" {
  description = "The state machine role's policy (JSON)."
  value       = aws_iam_role_policy.this.policy
}

output "role_arn" {
  description = "The state machine's execution role (named in the key policy)."
  value       = aws_iam_role.this.arn
}
