# Inputs of the inference stack. `make setup_inference_infra` renders most of them from the
# Hydra config (setup/conf) into vars/inference.tfvars.json; the defaults here are the rest.

# --- Identity -------------------------------------------------------------------------------
variable "project" {
  description = "Prefix of every resource name; bucket names derive from it, so it must be globally unique."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$", var.project))
    error_message = "project: 3-42 lowercase letters, digits and hyphens (it prefixes bucket names)."
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

# --- Storage --------------------------------------------------------------------------------
variable "data_bucket_name" {
  description = "Bucket where new scenes arrive; null = <project>-data."
  type        = string
  default     = null
}

variable "predictions_bucket_name" {
  description = "Bucket of class/confidence COGs, STAC items and run manifests; null = <project>-predictions."
  type        = string
  default     = null
}

variable "registry_bucket_name" {
  description = "Model registry bucket (shared with training); null = <project>-registry."
  type        = string
  default     = null
}

variable "input_prefix" {
  description = "Key prefix under the data bucket where scenes are discovered (INPUT_URI)."
  type        = string
  default     = "incoming"
}

variable "output_prefix" {
  description = "Key prefix under the predictions bucket for outputs (OUTPUT_URI)."
  type        = string
  default     = "predictions"
}

variable "manifest_prefix" {
  description = "Key prefix under the predictions bucket of the per-run manifests; expired by lifecycle."
  type        = string
  default     = "manifests/"
}

variable "manifest_expiration_days" {
  description = "Days run manifests are kept."
  type        = number
  default     = 30
}

variable "block_output_expiration_days" {
  description = "Days block outputs are kept (assembly removes them; this catches what a crash left)."
  type        = number
  default     = 3
}

variable "noncurrent_version_days" {
  description = "Days non-current object versions are kept (data, predictions, registry)."
  type        = number
  default     = 90
}

variable "data_infrequent_access_days" {
  description = "Days before raw scenes move to STANDARD_IA (null: never)."
  type        = number
  default     = 30
}

# --- Image and functions ----------------------------------------------------------------------
variable "image_tag" {
  description = "Tag of the inference image in ECR (pushed by `make setup_inference_infra`)."
  type        = string
  default     = "latest"
}

# Its home is the Hydra config (infra.lambda_architecture), which `make setup_inference_infra`
# renders into tfvars and builds the image for (docker build --platform linux/amd64 | linux/arm64).
variable "lambda_architecture" {
  description = "Instruction set of every function and of the image: x86_64 or arm64 (Graviton); also LAMBDA_ARCHITECTURE, which prices GB-seconds."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64 (Lambda's two instruction sets)."
  }
}

variable "process_memory_mb" {
  description = "Memory of the process function (discovery, validation, manifest)."
  type        = number
  default     = 1024
}

variable "process_timeout_s" {
  description = "Timeout of the process function."
  type        = number
  default     = 300
}

# The infer function's memory is what `make bench` measured it needs (peak RSS of one scene
# at the configured chip/batch size plus headroom). Its one home is the Hydra config
# (infra.infer_memory_mb), which `make setup_inference_infra` renders into tfvars; no default here.
variable "infer_memory_mb" {
  description = "Memory of the infer function in MB, from the benchmark's measured peak RSS (infra.infer_memory_mb)."
  type        = number
}

# Like infer_memory_mb, the timeout comes from the config (infra.infer_timeout_s): blocks are sized
# to fit it, so it has one home there; no default here.
variable "infer_timeout_s" {
  description = "Timeout of the infer and assemble functions (one block, one scene assembly), from infra.infer_timeout_s."
  type        = number
  validation {
    condition     = var.infer_timeout_s > 0 && var.infer_timeout_s <= 900
    error_message = "infer_timeout_s must be in (0, 900]: Lambda stops a call at 900 s."
  }
}

variable "infer_ephemeral_storage_mb" {
  description = "/tmp of the infer function: the model cache (MODEL_CACHE_DIR) and scene scratch."
  type        = number
  default     = 2048
}

variable "observe_memory_mb" {
  description = "Memory of the observe function (run metrics and drift)."
  type        = number
  default     = 1024
}

variable "observe_timeout_s" {
  description = "Timeout of the observe function."
  type        = number
  default     = 300
}

variable "failure_memory_mb" {
  description = "Memory of the failure function (records the Catch in the ledger)."
  type        = number
  default     = 256
}

variable "failure_timeout_s" {
  description = "Timeout of the failure function."
  type        = number
  default     = 60
}

variable "notify_memory_mb" {
  description = "Memory of the notify function (reads the run's summary from the ledger, publishes it)."
  type        = number
  default     = 256
}

variable "notify_timeout_s" {
  description = "Timeout of the notify function."
  type        = number
  default     = 60
}

variable "infer_reserved_concurrency" {
  description = "Reserved concurrency of the infer function (null: unreserved; the Map's MaxConcurrency bounds it)."
  type        = number
  default     = null
}

# --- Chain settings (ChainSettings env vars) ---------------------------------------------------
variable "model_name" {
  description = "Registry model name (MODEL_NAME)."
  type        = string
}

# The values of inference.settings.ChainDefaults.backend; its home is the Hydra config
# (infra.backend), rendered into tfvars (tests/infra/test_terraform.py checks all three agree).
variable "backend" {
  description = "Inference backend (BACKEND): auto (the fastest path this CPU, image and champion allow: OpenVINO or ONNX Runtime int8), onnx (ONNX Runtime only) or torch (fp32)."
  type        = string
  default     = "auto"

  validation {
    condition     = contains(["auto", "onnx", "torch"], var.backend)
    error_message = "backend must be auto, onnx or torch (inference.settings.ChainDefaults.backend)."
  }
}

variable "chain_settings" {
  description = "Further ChainSettings env vars (CHIP_SIZE, OVERLAP, BATCH_SIZE, LOW_CONFIDENCE_THRESHOLD, DRIFT_THRESHOLD, MAX_PIXELS, ...)."
  type        = map(string)
  default     = {}
}

variable "ledger_secret_arn" {
  description = "Ledger secret to use when enable_rds is false (an existing database); ignored otherwise."
  type        = string
  default     = null
}

# --- State machine and schedule ---------------------------------------------------------------
variable "state_machine_definition_file" {
  description = "ASL template deployed by the state machine; null = inference/statemachine/pipeline.asl.json."
  type        = string
  default     = null
}

variable "schedule_expression" {
  description = "When EventBridge Scheduler starts the pipeline: rate(...) or cron(...)."
  type        = string
  default     = "rate(1 day)"
}

variable "schedule_timezone" {
  description = "Timezone of cron schedule expressions."
  type        = string
  default     = "UTC"
}

variable "schedule_enabled" {
  description = "Whether the schedule is ENABLED."
  type        = bool
  default     = true
}

# --- Runs triggered by new imagery, completion notices ------------------------------------------
variable "trigger_enabled" {
  description = "Whether S3 Object Created events under input_prefix start runs (EventBridge rule -> trigger function); the schedule stays either way."
  type        = bool
  default     = true
}

variable "trigger_window_s" {
  description = "Seconds of the window whose uploads coalesce into one execution (TRIGGER_WINDOW_S); null = the chain's default."
  type        = number
  default     = null
}

variable "notice_subscriptions" {
  description = "Subscribers of the completion-notice topic: [{protocol = \"email\" | \"https\", endpoint = address or URL}]."
  type = list(object({
    protocol = string
    endpoint = string
  }))
  default = []

  validation {
    condition     = alltrue([for s in var.notice_subscriptions : contains(["email", "https"], s.protocol)])
    error_message = "notice_subscriptions: protocol must be email or https."
  }
}

# --- Network and database --------------------------------------------------------------------
variable "vpc_cidr" {
  description = "CIDR of the private VPC."
  type        = string
  default     = "10.42.0.0/16"
}

variable "availability_zones" {
  description = "AZs of the private subnets; null = <region>a and <region>b."
  type        = list(string)
  default     = null
}

variable "enable_rds" {
  description = "Create the RDS Postgres ledger (false: bring ledger_secret_arn)."
  type        = bool
  default     = true
}

variable "db_instance_class" {
  description = "RDS instance class of the ledger."
  type        = string
  default     = "db.t4g.micro"
}

variable "db_engine_version" {
  description = "Postgres engine version of the ledger."
  type        = string
  default     = "16.4"
}

variable "db_multi_az" {
  description = "Multi-AZ standby for the ledger."
  type        = bool
  default     = false
}

variable "db_password_version" {
  description = "Bump to rotate the generated ledger password (written to RDS and the secret, never to state)."
  type        = number
  default     = 1
}

variable "db_generate_password" {
  description = "Generate the ledger password in Secrets Manager (false: pass db_master_password, e.g. TF_VAR_db_master_password)."
  type        = bool
  default     = true
}

variable "db_master_password" {
  description = "Ledger master password when db_generate_password is false; ephemeral, never written to state."
  type        = string
  default     = null
  sensitive   = true
  ephemeral   = true
}

variable "enable_access_host" {
  description = "Create the SSM access host (and SSM endpoints) so Grafana can reach RDS through a port forward."
  type        = bool
  default     = false
}

# --- Operations -------------------------------------------------------------------------------
variable "log_retention_days" {
  description = "Retention of every log group."
  type        = number
  default     = 365
}

variable "alarm_email" {
  description = "E-mail subscribed to the alarm topic (null: none)."
  type        = string
  default     = null
}

variable "allow_destroy" {
  description = "Teardown mode set by `make clean_up_infra`: non-empty buckets/ECR may go, RDS loses deletion protection."
  type        = bool
  default     = false
}

# --- Key policy (modules/kms) -------------------------------------------------------------------
variable "kms_admin_arns" {
  description = "IAM principals administering the stack key (no encrypt/decrypt); empty = the account root (whom IAM policies allow)."
  type        = list(string)
  default     = []
}

variable "kms_deployer_arns" {
  description = "IAM principals that deploy and feed the stack (Terraform, scene uploads, model publishing): key use only through S3, Secrets Manager, RDS, ECR, Lambda (and EC2); empty = the identity running Terraform."
  type        = list(string)
  default     = []
}
