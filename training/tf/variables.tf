# Inputs of the training stack: AWS Batch for the heavy steps (training.runner=batch).

# --- Identity -------------------------------------------------------------------------------
variable "project" {
  description = "Prefix of every resource name; the Hydra config's infra.project (queue and job definition are <project>-training)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.project))
    error_message = "project: 3-42 lowercase letters, digits and hyphens."
  }
}

variable "aws_region" {
  description = "Region everything is deployed in."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags on every resource (Project/ManagedBy/Component are always set)."
  type        = map(string)
  default     = {}
}

# --- Buckets the jobs use (created elsewhere) --------------------------------------------------
variable "artifacts_bucket_name" {
  description = "Bucket of run folders and the feature cache (storage.root_uri); null = <project>-artifacts."
  type        = string
  default     = null
}

variable "data_bucket_name" {
  description = "Bucket of the training imagery (data.root_uri); null = <project>-data."
  type        = string
  default     = null
}

variable "registry_bucket_name" {
  description = "Bucket of the model registry (storage.registry_uri), read by train_head; null = <project>-registry."
  type        = string
  default     = null
}

# --- Network --------------------------------------------------------------------------------
variable "vpc_id" {
  description = "VPC of the compute environment."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (with a NAT or VPC endpoints for S3/ECR/logs) the GPU instances start in."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids: at least one subnet."
  }
}

# --- Compute ----------------------------------------------------------------------------------
variable "instance_types" {
  description = "GPU instance types Batch may start (one GPU each: the steps use one device)."
  type        = list(string)
  default     = ["g6.xlarge", "g6e.xlarge", "g5.xlarge", "g5.2xlarge"]

  validation {
    condition     = alltrue([for t in var.instance_types : can(regex("^(g4dn|g5|g5g|g6|g6e|gr6|p3|p4d|p4de|p5|p5e)\\.", t))])
    error_message = "instance_types: GPU families only (g4dn, g5, g6, g6e, gr6, p3, p4d, p5 ...)."
  }
}

variable "use_spot" {
  description = "Run on spot capacity (the job definition retries jobs whose host was reclaimed)."
  type        = bool
  default     = true
}

variable "spot_bid_percentage" {
  description = "Highest spot price as a percentage of on-demand (SPOT only)."
  type        = number
  default     = 100
}

variable "max_vcpus" {
  description = "Ceiling of the compute environment's vCPUs (bounds cost and array-job parallelism)."
  type        = number
  default     = 64
}

# --- Job ----------------------------------------------------------------------------------------
variable "image_tag" {
  description = "Tag of the training image in the ECR repository (immutable tags: one per build)."
  type        = string
  default     = "latest"
}

variable "job_vcpus" {
  description = "vCPUs of one job."
  type        = number
  default     = 4
}

variable "job_memory_mib" {
  description = "Memory (MiB) of one job."
  type        = number
  default     = 15000
}

variable "job_gpus" {
  description = "GPUs of one job."
  type        = number
  default     = 1
}

variable "job_timeout_s" {
  description = "Seconds after which an attempt is stopped."
  type        = number
  default     = 43200
}

variable "job_attempts" {
  description = "Attempts per job; only host terminations (spot reclaims) are retried."
  type        = number
  default     = 3
}

variable "landcover_overrides" {
  description = "LANDCOVER_OVERRIDES of the containers (the run's config is read from its folder; this only sets defaults)."
  type        = string
  default     = "storage=s3"
}

variable "log_retention_days" {
  description = "Days the job log group keeps its logs."
  type        = number
  default     = 365
}

variable "keep_images" {
  description = "Images kept in the ECR repository (older ones expire)."
  type        = number
  default     = 20
}

variable "force_delete_repository" {
  description = "Let terraform destroy delete the repository with its images."
  type        = bool
  default     = false
}
