output "job_queue" {
  description = "Name of the job queue (training.batch.job_queue)."
  value       = aws_batch_job_queue.training.name
}

output "job_definition" {
  description = "Name of the job definition (training.batch.job_definition)."
  value       = aws_batch_job_definition.training.name
}

output "job_definition_arn" {
  description = "ARN of the current revision of the job definition."
  value       = aws_batch_job_definition.training.arn
}

output "compute_environment_arn" {
  description = "ARN of the GPU compute environment."
  value       = aws_batch_compute_environment.gpu.arn
}

output "repository_url" {
  description = "ECR repository of the training image (push <url>:<image_tag>)."
  value       = aws_ecr_repository.training.repository_url
}

output "job_role_arn" {
  description = "IAM role the containers run as."
  value       = aws_iam_role.job.arn
}

output "log_group" {
  description = "CloudWatch log group of the jobs."
  value       = aws_cloudwatch_log_group.jobs.name
}
