output "role_arns" {
  description = "Execution role ARN by function key."
  value       = { for k, r in aws_iam_role.function : k => r.arn }
  # Lambda checks the ENI permissions at creation: hand out roles only once they hold them.
  depends_on = [aws_iam_role_policy.function]
}

output "principal_arns" {
  description = "Execution role ARN by function key, for the key policy: no wait on the role policies, which name the key."
  value       = { for k, r in aws_iam_role.function : k => r.arn }
}

output "role_policies" {
  description = "Each execution role's policy (JSON), by function key."
  value       = { for k, p in aws_iam_role_policy.function : k => p.policy }
}
