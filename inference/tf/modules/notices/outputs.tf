output "topic_arn" {
  description = "The completion-notice topic (NOTICE_TOPIC_ARN of the notify function)."
  value       = aws_sns_topic.notices.arn
}

output "topic_kms_key" {
  description = "The key the topic is encrypted with."
  value       = aws_sns_topic.notices.kms_master_key_id
}

output "subscriptions" {
  description = "Protocol and endpoint of each subscription."
  value       = [for s in aws_sns_topic_subscription.this : { protocol = s.protocol, endpoint = s.endpoint }]
}
