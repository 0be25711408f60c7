output "names" {
  description = "Bucket names by role."
  value       = { for k, b in aws_s3_bucket.this : k => b.bucket }
}

output "arns" {
  description = "Bucket ARNs by role."
  value       = { for k, b in aws_s3_bucket.this : k => b.arn }
}

output "public_access_blocks" {
  description = "The four public-access-block flags by bucket role (all true)."
  value = { for k, b in aws_s3_bucket_public_access_block.this : k => {
    block_public_acls       = b.block_public_acls
    block_public_policy     = b.block_public_policy
    ignore_public_acls      = b.ignore_public_acls
    restrict_public_buckets = b.restrict_public_buckets
  } }
}

output "encryption" {
  description = "Default encryption (algorithm and key) by bucket role."
  value = { for k, e in aws_s3_bucket_server_side_encryption_configuration.this : k => {
    sse_algorithm     = one(e.rule[*].apply_server_side_encryption_by_default[0].sse_algorithm)
    kms_master_key_id = one(e.rule[*].apply_server_side_encryption_by_default[0].kms_master_key_id)
  } }
}

output "versioning" {
  description = "Versioning status by bucket role."
  value       = { for k, v in aws_s3_bucket_versioning.this : k => v.versioning_configuration[0].status }
}

output "abort_incomplete_upload_days" {
  description = "Days after which incomplete multipart uploads are aborted, by bucket role."
  value = { for k, l in aws_s3_bucket_lifecycle_configuration.this : k => one(flatten([
    for r in l.rule : [for a in r.abort_incomplete_multipart_upload : a.days_after_initiation] if r.status == "Enabled"
  ])) }
}
