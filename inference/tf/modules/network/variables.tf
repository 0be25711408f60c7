variable "name" {
  description = "Name prefix of the VPC and its parts."
  type        = string
}

variable "region" {
  description = "Region, used in the VPC endpoint service names."
  type        = string
}

variable "cidr_block" {
  description = "CIDR of the VPC; each private subnet takes a /20 (with a /16) of it."
  type        = string
}

variable "availability_zones" {
  description = "AZs of the private subnets (RDS subnet groups need at least two)."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2
    error_message = "RDS needs subnets in at least two availability zones."
  }
}

variable "interface_endpoints" {
  description = "Service suffixes of the interface endpoints (e.g. secretsmanager, ssm)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting the flow-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the flow-log group."
  type        = number
}
