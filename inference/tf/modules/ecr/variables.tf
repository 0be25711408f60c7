variable "name" {
  description = "Repository name."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the images."
  type        = string
}

variable "keep_images" {
  description = "Images kept by the lifecycle policy; older ones expire."
  type        = number
  default     = 10
}

variable "force_delete" {
  description = "Delete the repository even if it holds images (set only by `make clean_up_infra`)."
  type        = bool
  default     = false
}
