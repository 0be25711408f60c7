# One customer-managed key for the inference stack: S3, logs, SNS, Secrets Manager, RDS,
# ECR, EBS (access host) and Lambda environment variables. Rotation is on. Least privilege:
#   - the administrators (the account root by default, i.e. whom IAM lets) manage the key but
#     cannot encrypt or decrypt with it;
#   - the deployer (whoever runs Terraform by default) uses it only through the stack's AWS
#     services (kms:ViaService) and creates grants only for AWS resources (RDS, ECR, Lambda, EBS);
#   - each execution role gets exactly the crypto actions it needs, through named services only;
#   - CloudWatch Logs and CloudWatch alarms (the SNS topic) are service principals, bound to this
#     stack's log groups (encryption context) and alarms (aws:SourceArn).
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The role behind an assumed-role session (or the user itself): a stable principal for the deployer.
data "aws_iam_session_context" "deployer" {
  count = length(var.deployer_arns) > 0 ? 0 : 1
  arn   = data.aws_caller_identity.current.arn
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  admin_arns    = length(var.admin_arns) > 0 ? var.admin_arns : ["arn:${local.partition}:iam::${local.account_id}:root"]
  deployer_arns = length(var.deployer_arns) > 0 ? var.deployer_arns : [data.aws_iam_session_context.deployer[0].issuer_arn]
  via           = { for s in distinct(concat(var.deployer_services, flatten(var.role_grants[*].services))) : s => "${s}.${var.region}.amazonaws.com" }

  # Key management only: no Encrypt/Decrypt/ReEncrypt/GenerateDataKey/Sign/Verify.
  admin_actions = [
    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
    "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
  ]

  # Every log group of the stack is /aws/<service...>/<name>...: Lambda, vended Step Functions, VPC flow logs.
  log_group_arns = "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/*/${var.name}*"
  alarm_arns     = "arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:${var.name}-*"

  statements = concat(
    [
      {
        Sid       = "KeyAdministration"
        Effect    = "Allow"
        Principal = { AWS = local.admin_arns }
        Action    = local.admin_actions
        Resource  = "*" # "*" in a key policy means this key
      },
      {
        Sid       = "DeployerUsesKeyThroughStackServices"
        Effect    = "Allow"
        Principal = { AWS = local.deployer_arns }
        Action    = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:ViaService"    = [for s in var.deployer_services : local.via[s]]
            "kms:CallerAccount" = local.account_id
          }
        }
      },
      {
        Sid       = "DeployerGrantsForStackResources"
        Effect    = "Allow"
        Principal = { AWS = local.deployer_arns }
        Action    = ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant", "kms:RetireGrant"]
        Resource  = "*"
        Condition = {
          Bool = { "kms:GrantIsForAWSResource" = "true" }
          StringEquals = {
            "kms:ViaService"    = [for s in var.deployer_services : local.via[s]]
            "kms:CallerAccount" = local.account_id
          }
        }
      },
    ],
    [
      for g in var.role_grants : {
        Sid       = g.sid
        Effect    = "Allow"
        Principal = { AWS = g.principal_arns }
        Action    = g.actions
        Resource  = "*"
        Condition = {
          StringEquals = {
            "kms:ViaService"    = [for s in g.services : local.via[s]]
            "kms:CallerAccount" = local.account_id
          }
        }
      }
    ],
    [
      {
        Sid       = "CloudWatchLogsEncryptsStackLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = { "kms:EncryptionContext:aws:logs:arn" = local.log_group_arns }
        }
      },
      {
        Sid       = "StackAlarmsPublishToEncryptedTopic"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
          ArnLike      = { "aws:SourceArn" = local.alarm_arns }
        }
      },
    ],
  )
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: encryption of inference data, logs and secrets"
  enable_key_rotation     = true
  deletion_window_in_days = var.deletion_window_in_days

  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.statements
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
