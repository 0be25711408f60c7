# One execution role per Lambda function, each granted only what that step does:
# its own log group, the buckets it reads or writes, the ledger secret, the KMS key,
# and the network interfaces a VPC function needs.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  ec2_arn    = "arn:${local.partition}:ec2:${local.region}:${local.account_id}"
}

resource "aws_iam_role" "function" {
  for_each = var.functions
  name     = "${var.name}-${each.key}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "function" {
  #checkov:skip=CKV_AWS_355:Only ec2:Describe*/xray:Put* use "*"; those actions have no resource-level permissions.
  #checkov:skip=CKV_AWS_290:Same statements: ec2 Describe and X-Ray writes cannot be scoped to a resource.
  for_each = var.functions
  name     = "least-privilege"
  role     = aws_iam_role.function[each.key].id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "OwnLogGroup"
          Effect   = "Allow"
          Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
          Resource = "${var.log_group_arns[each.key]}:*"
        },
        {
          Sid      = "Tracing"
          Effect   = "Allow"
          Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
          Resource = "*"
        },
        {
          Sid      = "VpcDescribe"
          Effect   = "Allow"
          Action   = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"]
          Resource = "*"
        },
        {
          Sid    = "VpcInterfaces"
          Effect = "Allow"
          Action = ["ec2:CreateNetworkInterface"]
          Resource = concat(
            ["${local.ec2_arn}:network-interface/*"],
            [for id in var.subnet_ids : "${local.ec2_arn}:subnet/${id}"],
            [for id in var.security_group_ids : "${local.ec2_arn}:security-group/${id}"],
          )
        },
        {
          Sid      = "VpcInterfaceLifecycle"
          Effect   = "Allow"
          Action   = ["ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"]
          Resource = "${local.ec2_arn}:network-interface/*"
        },
        {
          Sid      = "UseTheStackKey"
          Effect   = "Allow"
          Action   = length(each.value.write) + length(lookup(var.publish_topic_arns, each.key, [])) > 0 ? ["kms:Decrypt", "kms:GenerateDataKey"] : ["kms:Decrypt"]
          Resource = var.kms_key_arn
        },
      ],
      length(each.value.read) == 0 ? [] : [
        {
          Sid      = "ListReadBuckets"
          Effect   = "Allow"
          Action   = ["s3:ListBucket"]
          Resource = [for b in each.value.read : var.bucket_arns[b]]
        },
        {
          Sid      = "ReadObjects"
          Effect   = "Allow"
          Action   = ["s3:GetObject", "s3:GetObjectVersion"]
          Resource = [for b in each.value.read : "${var.bucket_arns[b]}/*"]
        },
      ],
      length(each.value.write) == 0 ? [] : [
        {
          Sid      = "WriteObjects"
          Effect   = "Allow"
          Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
          Resource = [for b in each.value.write : "${var.bucket_arns[b]}/*"]
        },
      ],
      length(each.value.delete) == 0 ? [] : [
        {
          Sid      = "DeleteObjects"
          Effect   = "Allow"
          Action   = ["s3:DeleteObject"]
          Resource = [for b in each.value.delete : "${var.bucket_arns[b]}/*"]
        },
      ],
      length(lookup(var.publish_topic_arns, each.key, [])) == 0 ? [] : [
        {
          Sid      = "PublishNotices"
          Effect   = "Allow"
          Action   = ["sns:Publish"]
          Resource = var.publish_topic_arns[each.key]
        },
      ],
      var.ledger_secret_arn == null ? [] : [
        {
          Sid      = "ReadLedgerCredentials"
          Effect   = "Allow"
          Action   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
          Resource = var.ledger_secret_arn
        },
      ],
    )
  })
}
