# Training stack: the AWS Batch side of training.runner=batch.
#   kms -> ecr (training image) -> cloudwatch (job logs) -> iam (instance, job) -> security group
#   -> compute environment (GPU, spot allowed) -> job queue -> job definition.
# Airflow's BatchOperator submits to <project>-training with the definition <project>-training;
# each job overrides the command with `python -m training.step <step> --run-uri s3://...`.
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  name      = "${var.project}-training"
  partition = data.aws_partition.current.partition
  account   = data.aws_caller_identity.current.account_id

  buckets = {
    artifacts = coalesce(var.artifacts_bucket_name, "${var.project}-artifacts")
    data      = coalesce(var.data_bucket_name, "${var.project}-data")
    registry  = coalesce(var.registry_bucket_name, "${var.project}-registry")
  }
  log_group = "/aws/batch/${local.name}"
}

# --- Encryption ---------------------------------------------------------------------------------
resource "aws_kms_key" "this" {
  description             = "${local.name}: ECR images and job logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncrypt"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.aws_region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = { "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${var.aws_region}:${local.account}:log-group:${local.log_group}" }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.this.key_id
}

# --- The training image -------------------------------------------------------------------------
resource "aws_ecr_repository" "training" {
  name                 = local.name
  image_tag_mutability = "IMMUTABLE" # a tag names one build
  force_delete         = var.force_delete_repository

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

resource "aws_ecr_lifecycle_policy" "training" {
  repository = aws_ecr_repository.training.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last ${var.keep_images} images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = var.keep_images }
      action       = { type = "expire" }
    }]
  })
}

# --- Logs ---------------------------------------------------------------------------------------
resource "aws_cloudwatch_log_group" "jobs" {
  name              = local.log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

# --- IAM ----------------------------------------------------------------------------------------
# The GPU instances: join the ECS cluster Batch manages, pull the image, write logs.
resource "aws_iam_role" "instance" {
  name = "${local.name}-instance"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ec2.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_role_policy" "instance_kms" {
  name = "decrypt-image"
  role = aws_iam_role.instance.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = ["kms:Decrypt"], Resource = aws_kms_key.this.arn }]
  })
}

resource "aws_iam_instance_profile" "instance" {
  name = "${local.name}-instance"
  role = aws_iam_role.instance.name
}

# The containers: read the data and the registry, read and write run folders and the feature cache.
resource "aws_iam_role" "job" {
  name = "${local.name}-job"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy" "job_s3" {
  name = "training-buckets"
  role = aws_iam_role.job.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "List"
        Effect   = "Allow"
        Action   = ["s3:ListBucket"]
        Resource = [for b in values(local.buckets) : "arn:${local.partition}:s3:::${b}"]
      },
      {
        Sid      = "Read"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = [for b in values(local.buckets) : "arn:${local.partition}:s3:::${b}/*"]
      },
      {
        Sid      = "WriteRuns"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
        Resource = ["arn:${local.partition}:s3:::${local.buckets.artifacts}/*"]
      },
    ]
  })
}

# --- Network ------------------------------------------------------------------------------------
resource "aws_security_group" "batch" {
  name        = local.name
  description = "Training GPU instances: no inbound; HTTPS out to S3, ECR and CloudWatch"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to AWS APIs (S3, ECR, CloudWatch Logs, ECS)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# --- Batch --------------------------------------------------------------------------------------
resource "aws_batch_compute_environment" "gpu" {
  compute_environment_name = local.name
  type                     = "MANAGED"
  state                    = "ENABLED"
  # No service_role: Batch uses its service-linked role (AWSServiceRoleForBatch).

  compute_resources {
    type                = var.use_spot ? "SPOT" : "EC2"
    allocation_strategy = var.use_spot ? "SPOT_PRICE_CAPACITY_OPTIMIZED" : "BEST_FIT_PROGRESSIVE"
    bid_percentage      = var.use_spot ? var.spot_bid_percentage : null
    instance_type       = var.instance_types
    min_vcpus           = 0 # nothing runs (or costs) between training runs
    max_vcpus           = var.max_vcpus
    subnets             = var.subnet_ids
    security_group_ids  = [aws_security_group.batch.id]
    instance_role       = aws_iam_instance_profile.instance.arn

    ec2_configuration {
      image_type = "ECS_AL2023_NVIDIA" # the GPU-optimised ECS AMI (NVIDIA driver + container toolkit)
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_batch_job_queue" "training" {
  name     = local.name
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.gpu.arn
  }
}

resource "aws_batch_job_definition" "training" {
  name                  = local.name
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true

  container_properties = jsonencode({
    image      = "${aws_ecr_repository.training.repository_url}:${var.image_tag}"
    command    = ["python", "-m", "training.step", "--help"] # each job overrides it with its step
    jobRoleArn = aws_iam_role.job.arn
    resourceRequirements = [
      { type = "VCPU", value = tostring(var.job_vcpus) },
      { type = "MEMORY", value = tostring(var.job_memory_mib) },
      { type = "GPU", value = tostring(var.job_gpus) },
    ]
    environment = [
      { name = "LANDCOVER_OVERRIDES", value = var.landcover_overrides },
      { name = "AWS_DEFAULT_REGION", value = var.aws_region },
    ]
    readonlyRootFilesystem = false # torch and the feature shards need a writable /tmp
    privileged             = false
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.jobs.name
        "awslogs-region"        = var.aws_region
        "awslogs-stream-prefix" = "step"
      }
    }
  })

  retry_strategy {
    attempts = var.job_attempts
    # A reclaimed spot instance is retried; a step that failed on its own is not.
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }

  timeout {
    attempt_duration_seconds = var.job_timeout_s
  }
}
