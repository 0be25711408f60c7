variable "name" {
  description = "Name prefix of the key alias (alias/<name>)."
  type        = string
}

variable "region" {
  description = "Region of the service endpoints the key policy names (logs principal, kms:ViaService)."
  type        = string
}

variable "deletion_window_in_days" {
  description = "Days a scheduled key deletion waits (7-30)."
  type        = number
  default     = 30
}

variable "admin_arns" {
  description = "IAM principals that administer the key (no encrypt/decrypt); empty = the account root, i.e. whom IAM policies allow."
  type        = list(string)
  default     = []
}

variable "deployer_arns" {
  description = "IAM principals that deploy and feed the stack (Terraform, uploads): key use through deployer_services only; empty = the identity running Terraform."
  type        = list(string)
  default     = []
}

variable "deployer_services" {
  description = "Services (endpoint prefixes) the deployers use the key through: kms:ViaService <service>.<region>.amazonaws.com."
  type        = list(string)
}

variable "role_grants" {
  description = "One key policy statement each: the roles (principal_arns) may do actions, through services only."
  type = list(object({
    sid            = string
    principal_arns = list(string)
    actions        = list(string)
    services       = list(string)
  }))
  default = []

  validation {
    condition = alltrue([for g in var.role_grants : alltrue([
      for a in g.actions : contains(["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"], a)
    ])])
    error_message = "role_grants: crypto actions only (Decrypt, Encrypt, GenerateDataKey[*], ReEncrypt*, DescribeKey)."
  }
}
