# The state machine, built from the same ASL file the local runner executes: templatefile()
# substitutes only the Lambda ARNs and the manifest bucket. Logs everything, traced.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  # Built from the name, not the resource, so the role can reference its own machine
  # (distributed Map child executions) without a dependency cycle.
  state_machine_arn = "arn:${data.aws_partition.current.partition}:states:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:stateMachine:${var.name}"
  execution_arns    = "arn:${data.aws_partition.current.partition}:states:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:execution:${var.name}/*"
  definition        = templatefile(var.definition_file, var.definition_vars)
}

resource "aws_iam_role" "this" {
  name = "${var.name}-sfn"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "states.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "this" {
  #checkov:skip=CKV_AWS_355:logs:*LogDelivery/ResourcePolicy and xray:* have no resource-level permissions (AWS Step Functions logging docs).
  #checkov:skip=CKV_AWS_290:Same statements: vended-log delivery and X-Ray writes cannot be scoped to a resource.
  name = "least-privilege"
  role = aws_iam_role.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "InvokeChainFunctions"
        Effect   = "Allow"
        Action   = ["lambda:InvokeFunction"]
        Resource = flatten([for arn in var.function_arns : [arn, "${arn}:*"]])
      },
      {
        Sid      = "ReadManifests"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${var.manifest_bucket_arn}/*"
      },
      {
        Sid      = "DecryptManifests"
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = var.kms_key_arn
      },
      {
        Sid      = "DistributedMapChildren"
        Effect   = "Allow"
        Action   = ["states:StartExecution"]
        Resource = local.state_machine_arn
      },
      {
        Sid      = "DistributedMapChildrenLifecycle"
        Effect   = "Allow"
        Action   = ["states:DescribeExecution", "states:StopExecution"]
        Resource = local.execution_arns
      },
      {
        Sid    = "VendedLogDelivery"
        Effect = "Allow"
        Action = [
          "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
          "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
        ]
        Resource = "*"
      },
      {
        Sid      = "Tracing"
        Effect   = "Allow"
        Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
        Resource = "*"
      },
    ]
  })
}

resource "aws_sfn_state_machine" "this" {
  name       = var.name
  type       = "STANDARD" # a distributed Map runs its children as STANDARD too
  role_arn   = aws_iam_role.this.arn
  definition = local.definition

  logging_configuration {
    log_destination        = "${var.log_group_arn}:*"
    include_execution_data = true
    level                  = "ALL"
  }

  tracing_configuration {
    enabled = true
  }

  depends_on = [aws_iam_role_policy.this]
}
