variable "name" {
  description = "Prefix shared with the functions and the state machine."
  type        = string
}

variable "function_keys" {
  description = "Function keys (process, infer, observe, failure): one log group and error alarm each."
  type        = list(string)
}

variable "function_names" {
  description = "Deployed function name by key (alarm dimensions)."
  type        = map(string)
}

variable "state_machine_arn" {
  description = "State machine whose failed/timed-out/aborted executions raise alarms."
  type        = string
}

variable "retention_days" {
  description = "Log retention in days."
  type        = number
}

variable "kms_key_arn" {
  description = "KMS key encrypting the log groups and the alarm topic."
  type        = string
}

variable "alarm_email" {
  description = "Optional e-mail subscribed to the alarm topic (null: none)."
  type        = string
  default     = null
}
