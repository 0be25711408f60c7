output "instance_id" {
  description = "Id of the SSM access host."
  value       = aws_instance.this.id
}

output "security_group_id" {
  description = "Security group of the access host (allowed into the database)."
  value       = aws_security_group.this.id
}
