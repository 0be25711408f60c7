variable "name" {
  description = "Prefix of the rule, function, role, queue and log group names."
  type        = string
}

variable "enabled" {
  description = "Whether the rule is ENABLED (false: uploads start nothing; the schedule still runs)."
  type        = bool
  default     = true
}

variable "bucket_id" {
  description = "The data bucket (its EventBridge notifications are turned on)."
  type        = string
}

variable "bucket_name" {
  description = "The data bucket's name (matched by the rule)."
  type        = string
}

variable "input_prefix" {
  description = "Key prefix of new scenes (INPUT_URI's): only uploads under it start runs."
  type        = string
}

variable "state_machine_arn" {
  description = "The pipeline the trigger starts."
  type        = string
}

variable "window_s" {
  description = "Seconds of the coalescing window (TRIGGER_WINDOW_S); null = the chain's default."
  type        = number
  default     = null

  validation {
    condition     = var.window_s == null ? true : (var.window_s >= 1 && var.window_s <= 86400)
    error_message = "trigger window must be 1-86400 s."
  }
}

variable "image_uri" {
  description = "ECR image URI (repository:tag): the chain's image, run with the trigger handler."
  type        = string
}

variable "architecture" {
  description = "Instruction set of the image: x86_64 or arm64."
  type        = string
  default     = "x86_64"
}

variable "memory_mb" {
  description = "Memory of the trigger function."
  type        = number
  default     = 256
}

variable "timeout_s" {
  description = "Timeout of the trigger function (a few Step Functions calls)."
  type        = number
  default     = 30
}

variable "reserved_concurrency" {
  description = "Reserved concurrency of the trigger function (null: unreserved)."
  type        = number
  default     = null
}

variable "kms_key_arn" {
  description = "The stack key: environment variables and the log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the function's log group."
  type        = number
}

variable "alarm_topic_arn" {
  description = "SNS topic the trigger's alarms (errors, dead letters) go to."
  type        = string
}
