variable "name" {
  description = "Name prefix of the key alias (alias/<name>)."
  type        = string
}

variable "region" {
  description = "Region of the CloudWatch Logs service principal allowed to use the key."
  type        = string
}

variable "deletion_window_in_days" {
  description = "Days a scheduled key deletion waits (7-30)."
  type        = number
  default     = 30
}
