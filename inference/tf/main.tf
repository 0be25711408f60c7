# Root module of the inference stack:
#   kms -> s3 (data, predictions, registry) -> ecr -> network -> rds (+ secret) ->
#   cloudwatch (log groups) -> iam (one role per function) -> lambda (process, infer, assemble, observe, failure, notify; one image)
#   -> sfn (the ASL file via templatefile) -> scheduler -> cloudwatch alarms; access (optional);
#   notices (the completion-notice SNS topic the notify function publishes to) and trigger (S3
#   Object Created under the input prefix -> EventBridge rule -> trigger function -> the machine).
data "aws_partition" "current" {}

locals {
  name = var.project
  azs  = coalesce(var.availability_zones, ["${var.aws_region}a", "${var.aws_region}b"])

  bucket_names = {
    data        = coalesce(var.data_bucket_name, "${var.project}-data")
    predictions = coalesce(var.predictions_bucket_name, "${var.project}-predictions")
    registry    = coalesce(var.registry_bucket_name, "${var.project}-registry")
  }

  definition_file = coalesce(var.state_machine_definition_file, "${path.module}/../statemachine/pipeline.asl.json")

  # The six functions of the chain, all in one image; each handler module has handler(event, context).
  # assemble holds a whole scene's rasters and reads its blocks: it gets the infer budget.
  functions = {
    process = {
      handler   = "inference.handlers.process.handler"
      memory_mb = var.process_memory_mb
      timeout_s = var.process_timeout_s
    }
    infer = {
      handler              = "inference.handlers.infer.handler"
      memory_mb            = var.infer_memory_mb
      timeout_s            = var.infer_timeout_s
      ephemeral_storage_mb = var.infer_ephemeral_storage_mb
      reserved_concurrency = var.infer_reserved_concurrency
    }
    assemble = {
      handler              = "inference.handlers.assemble.handler"
      memory_mb            = var.infer_memory_mb
      timeout_s            = var.infer_timeout_s
      ephemeral_storage_mb = var.infer_ephemeral_storage_mb
    }
    observe = {
      handler   = "inference.handlers.observe.handler"
      memory_mb = var.observe_memory_mb
      timeout_s = var.observe_timeout_s
    }
    failure = {
      handler   = "inference.handlers.failure.handler"
      memory_mb = var.failure_memory_mb
      timeout_s = var.failure_timeout_s
    }
    # The completion notice: reads the ledger, publishes one message per execution.
    notify = {
      handler     = "inference.handlers.notify.handler"
      memory_mb   = var.notify_memory_mb
      timeout_s   = var.notify_timeout_s
      environment = { NOTICE_TOPIC_ARN = module.notices.topic_arn }
    }
  }

  # What each function may touch (bucket roles): read = list + get, write = put.
  access = {
    process = { read = ["data", "registry"], write = ["predictions"] }
    infer   = { read = ["data", "registry", "predictions"], write = ["predictions"] }
    # assemble removes a scene's block outputs once its COGs are written.
    assemble = { read = ["data", "registry", "predictions"], write = ["predictions"], delete = ["predictions"] }
    observe  = { read = ["predictions", "registry"], write = ["predictions"] }
    failure  = { read = [], write = [] }
    # notify records each notice under <output prefix>/notices/ (and reads it: sent once).
    notify = { read = ["predictions"], write = ["predictions"] }
  }

  # Functions that publish to the notice topic. Kept apart from local.access: the key policy is
  # built from local.access and the topic is encrypted with the key (no cycle).
  notice_publishers = ["notify"]

  ledger_secret_arn = var.enable_rds ? module.rds[0].secret_arn : var.ledger_secret_arn

  # The key policy's statements for the execution roles, mirroring local.access: each function
  # decrypts its environment (lambda), the objects it reads (s3) and the ledger secret; writers
  # also generate data keys for the objects they put. The state machine reads the manifests.
  key_grants = concat(
    [for k, a in local.access : {
      sid            = "${title(k)}FunctionDecrypts"
      principal_arns = [module.iam.principal_arns[k]]
      actions        = ["kms:Decrypt"]
      services = concat(
        ["lambda"],
        length(concat(a.read, a.write)) > 0 ? ["s3"] : [],
        var.enable_rds || var.ledger_secret_arn != null ? ["secretsmanager"] : [], # as local.ledger_secret_arn, without waiting for it
      )
    }],
    [for k, a in local.access : {
      sid            = "${title(k)}FunctionWritesObjects"
      principal_arns = [module.iam.principal_arns[k]]
      actions        = ["kms:GenerateDataKey"]
      services       = ["s3"]
    } if length(a.write) > 0],
    # Publishing to the encrypted notice topic: SNS asks for a data key and decrypts with it.
    [for k, a in local.access : {
      sid            = "${title(k)}FunctionPublishesNotices"
      principal_arns = [module.iam.principal_arns[k]]
      actions        = ["kms:GenerateDataKey", "kms:Decrypt"]
      services       = ["sns"]
    } if contains(local.notice_publishers, k)],
    # The trigger function decrypts its environment only.
    [{
      sid            = "TriggerFunctionDecrypts"
      principal_arns = [module.trigger.role_arn]
      actions        = ["kms:Decrypt"]
      services       = ["lambda"]
    }],
    [{
      sid            = "StateMachineReadsManifests"
      principal_arns = [module.sfn.role_arn]
      actions        = ["kms:Decrypt"]
      services       = ["s3"]
    }],
  )

  # Where infer writes block outputs under the output prefix: training/artifacts.BLOCKS_DIR
  # (tests/infra/test_terraform.py checks they match). Expired by lifecycle after a crash.
  blocks_prefix = "${trimsuffix(var.output_prefix, "/")}/_blocks/"

  # ChainSettings, shared by every function. Blocks are sized for the infer function's budget.
  environment = merge(
    {
      INFER_MEMORY_MB     = tostring(var.infer_memory_mb)
      INFER_TIMEOUT_S     = tostring(var.infer_timeout_s)
      INPUT_URI           = "s3://${local.bucket_names.data}/${var.input_prefix}"
      OUTPUT_URI          = "s3://${local.bucket_names.predictions}/${var.output_prefix}"
      MANIFEST_URI        = "s3://${local.bucket_names.predictions}/${trimsuffix(var.manifest_prefix, "/")}"
      REGISTRY_URI        = "s3://${local.bucket_names.registry}"
      MODEL_NAME          = var.model_name
      BACKEND             = var.backend
      LAMBDA_ARCHITECTURE = var.lambda_architecture
      MODEL_CACHE_DIR     = "/tmp/model"
    },
    local.ledger_secret_arn == null ? {} : { LEDGER_SECRET_ARN = local.ledger_secret_arn },
    var.chain_settings,
  )
}

module "kms" {
  source                  = "./modules/kms"
  name                    = local.name
  region                  = var.aws_region
  deletion_window_in_days = var.allow_destroy ? 7 : 30
  admin_arns              = var.kms_admin_arns
  deployer_arns           = var.kms_deployer_arns
  # What the deployer encrypts through: bucket uploads, the ledger secret, and the grants RDS,
  # ECR, Lambda (environment) and EC2 (the access host's volume) take at creation.
  deployer_services = concat(["s3", "secretsmanager", "rds", "ecr", "lambda"], var.enable_access_host ? ["ec2"] : [])
  role_grants       = local.key_grants
}

module "s3" {
  source        = "./modules/s3"
  kms_key_arn   = module.kms.key_arn
  force_destroy = var.allow_destroy
  buckets = {
    data = {
      name                   = local.bucket_names.data
      noncurrent_days        = var.noncurrent_version_days
      infrequent_access_days = var.data_infrequent_access_days
    }
    predictions = {
      name            = local.bucket_names.predictions
      noncurrent_days = var.noncurrent_version_days
      expire_prefixes = {
        (var.manifest_prefix) = var.manifest_expiration_days
        (local.blocks_prefix) = var.block_output_expiration_days
      }
    }
    registry = {
      name            = local.bucket_names.registry
      noncurrent_days = var.noncurrent_version_days
    }
  }
}

module "ecr" {
  source       = "./modules/ecr"
  name         = local.name
  kms_key_arn  = module.kms.key_arn
  force_delete = var.allow_destroy
}

module "network" {
  source             = "./modules/network"
  name               = local.name
  region             = var.aws_region
  cidr_block         = var.vpc_cidr
  availability_zones = local.azs
  # sns: the notify function publishes from the private subnets.
  interface_endpoints = concat(
    ["secretsmanager", "sns"],
    var.enable_access_host ? ["ssm", "ssmmessages", "ec2messages"] : [],
  )
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
}

module "rds" {
  count          = var.enable_rds ? 1 : 0
  source         = "./modules/rds"
  providers      = { aws = aws, aws.secrets = aws.secrets }
  name           = local.name
  vpc_id         = module.network.vpc_id
  subnet_ids     = module.network.private_subnet_ids
  kms_key_arn    = module.kms.key_arn
  instance_class = var.db_instance_class
  engine_version = var.db_engine_version
  multi_az       = var.db_multi_az

  generate_password           = var.db_generate_password
  master_password             = var.db_master_password
  password_version            = var.db_password_version
  deletion_protection         = !var.allow_destroy
  secret_recovery_window_days = var.allow_destroy ? 0 : 7

  client_security_group_ids = merge(
    { lambda = module.network.lambda_security_group_id },
    var.enable_access_host ? { access = module.access[0].security_group_id } : {},
  )
}

module "access" {
  count                      = var.enable_access_host && var.enable_rds ? 1 : 0
  source                     = "./modules/access"
  name                       = local.name
  partition                  = data.aws_partition.current.partition
  vpc_id                     = module.network.vpc_id
  vpc_cidr                   = module.network.cidr_block
  subnet_id                  = module.network.private_subnet_ids[0]
  database_security_group_id = module.rds[0].security_group_id
  kms_key_arn                = module.kms.key_arn
}

module "cloudwatch" {
  source            = "./modules/cloudwatch"
  name              = local.name
  function_keys     = keys(local.functions)
  function_names    = module.lambda.names
  state_machine_arn = module.sfn.arn
  retention_days    = var.log_retention_days
  kms_key_arn       = module.kms.key_arn
  alarm_email       = var.alarm_email
}

module "iam" {
  source             = "./modules/iam"
  name               = local.name
  functions          = local.access
  publish_topic_arns = { for k in local.notice_publishers : k => [module.notices.topic_arn] }
  bucket_arns        = module.s3.arns
  log_group_arns     = module.cloudwatch.function_log_group_arns
  kms_key_arn        = module.kms.key_arn
  ledger_secret_arn  = local.ledger_secret_arn
  subnet_ids         = module.network.private_subnet_ids
  security_group_ids = [module.network.lambda_security_group_id]
}

module "lambda" {
  source             = "./modules/lambda"
  name               = local.name
  image_uri          = "${module.ecr.repository_url}:${var.image_tag}"
  architecture       = var.lambda_architecture
  functions          = local.functions
  environment        = local.environment
  role_arns          = module.iam.role_arns
  log_group_names    = module.cloudwatch.function_log_group_names
  kms_key_arn        = module.kms.key_arn
  subnet_ids         = module.network.private_subnet_ids
  security_group_ids = [module.network.lambda_security_group_id]
}

module "sfn" {
  source          = "./modules/sfn"
  name            = "${local.name}-pipeline"
  definition_file = local.definition_file
  definition_vars = {
    process_function_arn  = module.lambda.arns["process"]
    infer_function_arn    = module.lambda.arns["infer"]
    assemble_function_arn = module.lambda.arns["assemble"]
    observe_function_arn  = module.lambda.arns["observe"]
    failure_function_arn  = module.lambda.arns["failure"]
    notify_function_arn   = module.lambda.arns["notify"]
    manifest_bucket       = module.s3.names["predictions"]
  }
  function_arns       = values(module.lambda.arns)
  manifest_bucket_arn = module.s3.arns["predictions"]
  kms_key_arn         = module.kms.key_arn
  log_group_arn       = module.cloudwatch.state_machine_log_group_arn
}

module "scheduler" {
  source              = "./modules/scheduler"
  name                = "${local.name}-pipeline"
  state_machine_arn   = module.sfn.arn
  schedule_expression = var.schedule_expression
  timezone            = var.schedule_timezone
  enabled             = var.schedule_enabled
}

module "notices" {
  source        = "./modules/notices"
  name          = local.name
  kms_key_arn   = module.kms.key_arn
  subscriptions = var.notice_subscriptions
}

module "trigger" {
  source             = "./modules/trigger"
  name               = "${local.name}-pipeline"
  enabled            = var.trigger_enabled
  bucket_id          = module.s3.names["data"]
  bucket_name        = module.s3.names["data"]
  input_prefix       = "${trimsuffix(var.input_prefix, "/")}/"
  state_machine_arn  = module.sfn.arn
  window_s           = var.trigger_window_s
  image_uri          = "${module.ecr.repository_url}:${var.image_tag}"
  architecture       = var.lambda_architecture
  kms_key_arn        = module.kms.key_arn
  log_retention_days = var.log_retention_days
  alarm_topic_arn    = module.cloudwatch.alarm_topic_arn
}
