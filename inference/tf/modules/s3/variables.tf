variable "buckets" {
  description = <<-EOT
    Buckets by role (data, predictions, registry). For each: its globally unique name, the days
    non-current versions are kept, optional days before current objects move to STANDARD_IA,
    and optional {prefix = days} expirations.
  EOT
  type = map(object({
    name                   = string
    noncurrent_days        = number
    infrequent_access_days = optional(number)
    expire_prefixes        = optional(map(number), {})
  }))
}

variable "kms_key_arn" {
  description = "KMS key for default SSE-KMS encryption."
  type        = string
}

variable "force_destroy" {
  description = "Allow destroying non-empty buckets (set only by `make clean_up_infra`)."
  type        = bool
  default     = false
}
