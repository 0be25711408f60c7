# Runs triggered by new imagery: the data bucket sends its events to EventBridge; a rule matches
# S3 "Object Created" under the input prefix and invokes the trigger function, which coalesces
# the uploads of a window into one execution (inference/trigger.py). The function needs no
# ledger, so it runs outside the VPC; its role may only list, describe and start executions of
# the one state machine. Events it could not take (after EventBridge's and Lambda's retries)
# land in a dead-letter queue; the schedule remains the safety net.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition = data.aws_partition.current.partition
  # Executions of the machine: arn:...:execution:<machine name>:<execution name>.
  execution_arns = "${replace(var.state_machine_arn, ":stateMachine:", ":execution:")}:*"
  # inference.trigger.event_pattern(bucket, prefix) (tests/infra/test_terraform.py checks they match).
  event_pattern = {
    source        = ["aws.s3"]
    "detail-type" = ["Object Created"]
    detail = {
      bucket = { name = [var.bucket_name] }
      object = { key = [{ prefix = var.input_prefix }] }
    }
  }
  environment = merge(
    { STATE_MACHINE_ARN = var.state_machine_arn },
    var.window_s == null ? {} : { TRIGGER_WINDOW_S = tostring(var.window_s) },
  )
}

resource "aws_s3_bucket_notification" "eventbridge" {
  bucket      = var.bucket_id
  eventbridge = true
}

resource "aws_cloudwatch_event_rule" "object_created" {
  name          = "${var.name}-object-created"
  description   = "New imagery under s3://${var.bucket_name}/${var.input_prefix} starts (or joins) a pipeline run"
  event_pattern = jsonencode(local.event_pattern)
  state         = var.enabled ? "ENABLED" : "DISABLED"
}

resource "aws_cloudwatch_event_target" "trigger" {
  rule = aws_cloudwatch_event_rule.object_created.name
  arn  = aws_lambda_function.trigger.arn

  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 8
  }

  dead_letter_config {
    arn = aws_sqs_queue.dead_letters.arn
  }
}

resource "aws_lambda_permission" "events" {
  statement_id  = "AllowObjectCreatedRule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.trigger.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.object_created.arn
}

# Events EventBridge or Lambda (async invoke) could not deliver, kept 14 days for a look.
resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name}-trigger-dead-letters"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue_policy" "dead_letters" {
  queue_url = aws_sqs_queue.dead_letters.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "RuleDeadLetters"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.dead_letters.arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.object_created.arn } }
    }]
  })
}

resource "aws_cloudwatch_log_group" "trigger" {
  name              = "/aws/lambda/${var.name}-trigger"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_iam_role" "trigger" {
  name = "${var.name}-trigger"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "trigger" {
  #checkov:skip=CKV_AWS_355:Only xray:Put* uses "*"; X-Ray writes have no resource-level permissions.
  #checkov:skip=CKV_AWS_290:Same statement: X-Ray writes cannot be scoped to a resource.
  name = "least-privilege"
  role = aws_iam_role.trigger.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "OwnLogGroup"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${aws_cloudwatch_log_group.trigger.arn}:*"
      },
      {
        Sid      = "Tracing"
        Effect   = "Allow"
        Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
        Resource = "*"
      },
      {
        Sid      = "StartAndListTheMachine"
        Effect   = "Allow"
        Action   = ["states:StartExecution", "states:ListExecutions"]
        Resource = var.state_machine_arn
      },
      {
        Sid      = "DescribeItsExecutions"
        Effect   = "Allow"
        Action   = ["states:DescribeExecution"]
        Resource = local.execution_arns
      },
      {
        Sid      = "DeadLetters"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = aws_sqs_queue.dead_letters.arn
      },
      {
        Sid      = "DecryptOwnEnvironment"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = var.kms_key_arn
      },
    ]
  })
}

resource "aws_lambda_function" "trigger" {
  #checkov:skip=CKV_AWS_117:Outside the VPC on purpose: it calls only the Step Functions API and touches no data or ledger (no endpoint or NAT needed).
  #checkov:skip=CKV_AWS_272:Code signing applies to .zip packages only; images are pinned by immutable ECR tags and scanned on push.
  #checkov:skip=CKV_AWS_115:Bounded by the events' rate; reserving concurrency fails on accounts with the default quota (reserved_concurrency sets it when wanted).
  function_name = "${var.name}-trigger"
  role          = aws_iam_role.trigger.arn
  package_type  = "Image"
  image_uri     = var.image_uri
  architectures = [var.architecture]
  memory_size   = var.memory_mb
  timeout       = var.timeout_s
  kms_key_arn   = var.kms_key_arn

  reserved_concurrent_executions = var.reserved_concurrency

  image_config {
    command = ["inference.handlers.trigger.handler"]
  }

  environment {
    variables = local.environment
  }

  dead_letter_config {
    target_arn = aws_sqs_queue.dead_letters.arn
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.trigger.name
  }

  tracing_config {
    mode = "Active"
  }

  depends_on = [aws_iam_role_policy.trigger]
}

# A trigger that keeps failing, or events left in the dead-letter queue, page the stack's alarm topic.
locals {
  alarms = {
    errors = {
      description = "The trigger Lambda raised errors: uploads may not have started a run (the schedule still will)."
      namespace   = "AWS/Lambda"
      metric      = "Errors"
      dimensions  = { FunctionName = aws_lambda_function.trigger.function_name }
      statistic   = "Sum"
    }
    dead-letters = {
      description = "Object Created events the trigger could not take are waiting in the dead-letter queue."
      namespace   = "AWS/SQS"
      metric      = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = aws_sqs_queue.dead_letters.name }
      statistic   = "Maximum"
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "trigger" {
  for_each            = local.alarms
  alarm_name          = "${var.name}-trigger-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = [var.alarm_topic_arn]
}
