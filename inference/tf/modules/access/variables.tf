variable "name" {
  description = "Name prefix."
  type        = string
}

variable "partition" {
  description = "AWS partition (aws, aws-cn, ...) of the managed SSM policy ARN."
  type        = string
  default     = "aws"
}

variable "vpc_id" {
  description = "VPC of the host."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of the VPC (where the SSM endpoints answer)."
  type        = string
}

variable "subnet_id" {
  description = "Private subnet of the host."
  type        = string
}

variable "database_security_group_id" {
  description = "Security group of the ledger database."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the root volume."
  type        = string
}

variable "instance_type" {
  description = "Instance type (ARM, matching the default AMI)."
  type        = string
  default     = "t4g.nano"
}

variable "ami_ssm_parameter" {
  description = "Public SSM parameter holding the AMI id (Amazon Linux 2023 ships the SSM agent)."
  type        = string
  default     = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
}
