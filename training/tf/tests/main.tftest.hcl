# Offline plan/apply of the training stack against a mocked AWS provider: no credentials, no
# network. Asserts what training.runner=batch relies on; run with `terraform test` in training/tf.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/mock" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_batch_compute_environment" {
    defaults = { arn = "arn:aws:batch:us-east-1:123456789012:compute-environment/lctest-training" }
  }
  mock_resource "aws_ecr_repository" {
    defaults = { repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lctest-training" }
  }
}

variables {
  project    = "lctest"
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  image_tag  = "v1"
}

run "spot_gpu_stack" {
  command = apply

  assert {
    condition     = aws_batch_job_queue.training.name == "lctest-training" && aws_batch_job_definition.training.name == "lctest-training"
    error_message = "queue and job definition must be <project>-training (the names training.batch defaults to)"
  }
  assert {
    condition     = aws_batch_compute_environment.gpu.compute_resources[0].type == "SPOT"
    error_message = "spot capacity is the default"
  }
  assert {
    condition     = alltrue([for t in aws_batch_compute_environment.gpu.compute_resources[0].instance_type : can(regex("^(g|p)[0-9]", t))])
    error_message = "only GPU instance types"
  }
  assert {
    condition     = aws_batch_compute_environment.gpu.compute_resources[0].min_vcpus == 0
    error_message = "the environment scales to zero between runs"
  }
  assert {
    condition     = aws_batch_compute_environment.gpu.compute_resources[0].ec2_configuration[0].image_type == "ECS_AL2023_NVIDIA"
    error_message = "GPU instances need the NVIDIA ECS AMI"
  }
  assert {
    condition     = jsondecode(aws_batch_job_definition.training.container_properties).image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/lctest-training:v1"
    error_message = "the job definition runs the training image from this stack's ECR repository"
  }
  assert {
    condition = contains(
      [for r in jsondecode(aws_batch_job_definition.training.container_properties).resourceRequirements : "${r.type}=${r.value}"],
      "GPU=1"
    )
    error_message = "one GPU per job"
  }
  assert {
    condition     = slice(jsondecode(aws_batch_job_definition.training.container_properties).command, 0, 3) == ["python", "-m", "training.step"]
    error_message = "the container runs the step CLI"
  }
  assert {
    condition     = aws_batch_job_definition.training.retry_strategy[0].evaluate_on_exit[0].action == "RETRY" && aws_batch_job_definition.training.retry_strategy[0].evaluate_on_exit[0].on_status_reason == "Host EC2*"
    error_message = "spot reclaims are retried"
  }
  assert {
    condition     = aws_ecr_repository.training.image_tag_mutability == "IMMUTABLE"
    error_message = "image tags are immutable"
  }
  assert {
    condition = contains(
      jsondecode(aws_iam_role_policy.job_s3.policy).Statement[2].Resource,
      "arn:aws:s3:::lctest-artifacts/*"
    ) && length(jsondecode(aws_iam_role_policy.job_s3.policy).Statement[2].Resource) == 1
    error_message = "the jobs write only to the artifacts bucket"
  }
  assert {
    condition     = length(aws_security_group.batch.ingress) == 0
    error_message = "no inbound traffic to the GPU instances"
  }
}

run "on_demand" {
  command = plan

  variables {
    use_spot = false
  }

  assert {
    condition     = aws_batch_compute_environment.gpu.compute_resources[0].type == "EC2" && aws_batch_compute_environment.gpu.compute_resources[0].bid_percentage == null
    error_message = "use_spot=false gives on-demand capacity"
  }
}

run "refuses_cpu_instance_types" {
  command = plan

  variables {
    instance_types = ["m5.xlarge"]
  }

  expect_failures = [var.instance_types]
}
