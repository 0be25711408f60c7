output "address" {
  description = "Hostname of the instance (private)."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the instance."
  value       = aws_db_instance.this.port
}

output "publicly_accessible" {
  description = "Always false."
  value       = aws_db_instance.this.publicly_accessible
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.this.id
}

output "secret_arn" {
  description = "Secrets Manager secret with {username,password,host,port,dbname}."
  value       = aws_secretsmanager_secret.this.arn
}

output "storage_encrypted" {
  description = "Always true."
  value       = aws_db_instance.this.storage_encrypted
}
