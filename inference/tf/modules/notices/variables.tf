variable "name" {
  description = "Prefix of the topic name (<name>-notices)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the topic (the publisher needs kms:GenerateDataKey and kms:Decrypt through SNS)."
  type        = string
}

variable "subscriptions" {
  description = "Who gets the notices: {protocol = email | https, endpoint = address or URL, raw = raw delivery for https}."
  type = list(object({
    protocol = string
    endpoint = string
    raw      = optional(bool, true)
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.subscriptions : contains(["email", "https"], s.protocol)])
    error_message = "notice subscriptions: protocol must be email or https."
  }
  validation {
    condition     = alltrue([for s in var.subscriptions : s.protocol != "https" || startswith(s.endpoint, "https://")])
    error_message = "notice subscriptions: an https endpoint must be an https:// URL."
  }
}
