output "bucket_names" {
  description = "Bucket names by role (data, predictions, registry)."
  value       = module.s3.names
}

output "ecr_repository_url" {
  description = "Where `make setup_inference_infra` pushes the image."
  value       = module.ecr.repository_url
}

output "function_names" {
  description = "Lambda function names by step."
  value       = module.lambda.names
}

output "state_machine_arn" {
  description = "The pipeline's state machine."
  value       = module.sfn.arn
}

output "schedule_arn" {
  description = "The EventBridge Scheduler schedule starting the pipeline."
  value       = module.scheduler.arn
}

output "ledger_secret_arn" {
  description = "Secret with the ledger credentials (RDS or the one given)."
  value       = local.ledger_secret_arn
}

output "ledger_address" {
  description = "Private hostname of the ledger database (null without RDS)."
  value       = var.enable_rds ? module.rds[0].address : null
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = module.cloudwatch.alarm_topic_arn
}

output "grafana_tunnel_command" {
  description = "Port-forward the ledger to localhost:5432 through SSM (null without the access host)."
  value = length(module.access) == 0 ? null : join(" ", [
    "aws ssm start-session --target ${module.access[0].instance_id}",
    "--document-name AWS-StartPortForwardingSessionToRemoteHost",
    "--parameters host=${module.rds[0].address},portNumber=5432,localPortNumber=5432",
  ])
}

output "state_machine_definition_file" {
  description = "The ASL template the state machine was built from."
  value       = local.definition_file
}

output "notice_topic_arn" {
  description = "SNS topic of the completion notices (one message per execution)."
  value       = module.notices.topic_arn
}

output "trigger_function_name" {
  description = "The function S3 Object Created events under the input prefix invoke."
  value       = module.trigger.function_name
}

output "trigger_rule_arn" {
  description = "The EventBridge rule on the data bucket's Object Created events."
  value       = module.trigger.rule_arn
}
