output "vpc_id" {
  description = "Id of the VPC."
  value       = aws_vpc.this.id
}

output "cidr_block" {
  description = "CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "private_subnet_ids" {
  description = "Ids of the private subnets (Lambda, RDS, bastion)."
  value       = aws_subnet.private[*].id
}

output "lambda_security_group_id" {
  description = "Security group of the Lambda functions."
  value       = aws_security_group.lambda.id
}

output "interface_endpoint_services" {
  description = "Service suffixes of the interface endpoints (secretsmanager, sns, ...)."
  value       = keys(aws_vpc_endpoint.interface)
}
