variable "name" {
  description = "State machine name."
  type        = string
}

variable "definition_file" {
  description = "Path of the ASL template (inference/statemachine/pipeline.asl.json)."
  type        = string
}

variable "definition_vars" {
  description = "templatefile() variables: the four *_function_arn values and manifest_bucket."
  type        = map(string)
}

variable "function_arns" {
  description = "Lambda ARNs the machine may invoke."
  type        = list(string)
}

variable "manifest_bucket_arn" {
  description = "Bucket the distributed Map's ItemReader reads manifests from."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key of the manifest bucket."
  type        = string
}

variable "log_group_arn" {
  description = "Log group receiving execution logs."
  type        = string
}
