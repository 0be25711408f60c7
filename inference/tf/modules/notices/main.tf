# The completion-notice topic: the notify function publishes one message per execution (JSON for
# HTTPS subscribers, text for e-mail ones); subscriptions come from var.subscriptions.
resource "aws_sns_topic" "notices" {
  name              = "${var.name}-notices"
  kms_master_key_id = var.kms_key_arn
}

resource "aws_sns_topic_subscription" "this" {
  for_each  = { for s in var.subscriptions : "${s.protocol}:${s.endpoint}" => s }
  topic_arn = aws_sns_topic.notices.arn
  protocol  = each.value.protocol
  endpoint  = each.value.endpoint
  # HTTPS endpoints get the JSON summary itself, not SNS's envelope around it.
  raw_message_delivery = each.value.protocol == "https" ? each.value.raw : false
}
