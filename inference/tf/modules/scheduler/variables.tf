variable "name" {
  description = "Schedule (and role prefix) name."
  type        = string
}

variable "state_machine_arn" {
  description = "The state machine the schedule starts."
  type        = string
}

variable "schedule_expression" {
  description = "rate(...) or cron(...) expression."
  type        = string
}

variable "timezone" {
  description = "Timezone of cron expressions."
  type        = string
  default     = "UTC"
}

variable "enabled" {
  description = "ENABLED or DISABLED schedule."
  type        = bool
  default     = true
}

variable "input" {
  description = "Execution input (JSON-encoded into the target)."
  type        = any
  default     = {}
}
