variable "name" {
  description = "Prefix of the function names (<name>-<key>)."
  type        = string
}

variable "image_uri" {
  description = "ECR image URI (repository:tag) every function runs."
  type        = string
}

variable "architecture" {
  description = "Instruction set of the image: x86_64 or arm64."
  type        = string
  default     = "x86_64"
}

variable "functions" {
  description = <<-EOT
    Per function key: the handler (image_config.command, e.g. inference.handlers.infer.handler),
    memory (MB), timeout (s), /tmp size (MB), optional reserved concurrency and extra env vars.
  EOT
  type = map(object({
    handler              = string
    memory_mb            = number
    timeout_s            = number
    ephemeral_storage_mb = optional(number, 512)
    reserved_concurrency = optional(number)
    environment          = optional(map(string), {})
  }))

  validation {
    condition     = alltrue([for f in values(var.functions) : f.memory_mb >= 128 && f.memory_mb <= 10240])
    error_message = "Lambda memory must be 128-10240 MB."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.timeout_s >= 1 && f.timeout_s <= 900])
    error_message = "Lambda timeout must be 1-900 s."
  }
}

variable "environment" {
  description = "Environment shared by every function (ChainSettings variables); per-function values win."
  type        = map(string)
}

variable "role_arns" {
  description = "Execution role ARN by function key (iam module)."
  type        = map(string)
}

variable "log_group_names" {
  description = "Log group name by function key (cloudwatch module)."
  type        = map(string)
}

variable "kms_key_arn" {
  description = "KMS key encrypting the environment variables at rest."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets the functions run in."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups of the functions."
  type        = list(string)
}
