# The chain's functions, all from one container image; each differs only in its handler
# (image_config.command), memory, timeout, /tmp size, role and extra environment.
resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions, whose Retry/Catch handles failures; a DLQ only applies to async invokes.
  #checkov:skip=CKV_AWS_272:Code signing applies to .zip packages only; images are pinned by immutable ECR tags and scanned on push.
  #checkov:skip=CKV_AWS_115:Concurrency is bounded by the Map state's MaxConcurrency; reserving it fails on accounts with the default quota (reserved_concurrency variable sets it when wanted).
  for_each = var.functions

  function_name = "${var.name}-${each.key}"
  role          = var.role_arns[each.key]
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = [var.architecture]
  memory_size   = each.value.memory_mb
  timeout       = each.value.timeout_s
  kms_key_arn   = var.kms_key_arn

  reserved_concurrent_executions = each.value.reserved_concurrency

  image_config {
    command = [each.value.handler]
  }

  ephemeral_storage {
    size = each.value.ephemeral_storage_mb
  }

  environment {
    variables = merge(var.environment, each.value.environment)
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  logging_config {
    log_format = "Text"
    log_group  = var.log_group_names[each.key]
  }

  tracing_config {
    mode = "Active"
  }
}
