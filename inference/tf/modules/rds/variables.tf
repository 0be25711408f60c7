variable "name" {
  description = "Identifier of the instance, subnet group, parameter group and secret prefix."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the security group."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (two AZs at least)."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups allowed to connect on 5432, by a static label (lambda, access)."
  type        = map(string)
}

variable "engine_version" {
  description = "Postgres version (major.minor); the major picks the parameter group family."
  type        = string
  default     = "16.4"
}

variable "instance_class" {
  description = "Instance class."
  type        = string
  default     = "db.t4g.micro"
}

variable "allocated_storage_gb" {
  description = "Initial storage (GB); autoscaling goes up to five times this."
  type        = number
  default     = 20
}

variable "db_name" {
  description = "Database name of the ledger."
  type        = string
  default     = "ledger"
}

variable "username" {
  description = "Master user name (its password is generated, never given)."
  type        = string
  default     = "ledger_admin"
}

variable "generate_password" {
  description = "Generate the master password with Secrets Manager (false: use master_password)."
  type        = bool
  default     = true
}

variable "master_password" {
  description = "Bring-your-own master password when generate_password is false; ephemeral, never stored."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "password_version" {
  description = "Bump to generate and apply a new password to the instance and the secret."
  type        = number
  default     = 1
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the secret."
  type        = string
}

variable "multi_az" {
  description = "Standby in a second AZ."
  type        = bool
  default     = false
}

variable "backup_retention_days" {
  description = "Automated backup retention."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Protect against deletion and take a final snapshot; `make clean_up_infra` turns it off."
  type        = bool
  default     = true
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can be restored (0 deletes at once)."
  type        = number
  default     = 7
}
