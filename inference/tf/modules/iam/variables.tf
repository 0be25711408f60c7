variable "name" {
  description = "Prefix of the role names (<name>-<function>)."
  type        = string
}

variable "functions" {
  description = "Per function key (process, infer, ...): bucket roles it reads (list+get), writes (put) and deletes from."
  type = map(object({
    read   = list(string)
    write  = list(string)
    delete = optional(list(string), [])
  }))
}

variable "bucket_arns" {
  description = "Bucket ARNs by role, as output by the s3 module."
  type        = map(string)
}

variable "log_group_arns" {
  description = "Each function's own log group ARN, by function key."
  type        = map(string)
}

variable "kms_key_arn" {
  description = "The stack's KMS key (S3 SSE-KMS, secret, env vars)."
  type        = string
}

variable "ledger_secret_arn" {
  description = "Secrets Manager secret with the ledger credentials; null grants no secret access."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Subnets the functions attach to (scopes ec2:CreateNetworkInterface)."
  type        = list(string)
}

variable "security_group_ids" {
  description = "Security groups the functions use (scopes ec2:CreateNetworkInterface)."
  type        = list(string)
}

variable "publish_topic_arns" {
  description = "Per function key: SNS topics it may publish to (apart from functions: the roles must not wait on the topics, which the key policy naming the roles encrypts)."
  type        = map(list(string))
  default     = {}
}
