# Credentials come from the environment (AWS_PROFILE / AWS_ACCESS_KEY_ID ...); none live here.
# Tests against a moto server add an `*_override.tf` with endpoints, never this file.
provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge(var.tags, {
      Project   = var.project
      ManagedBy = "terraform"
      Component = "inference"
    })
  }
}

# The same account and region, used only to generate the ledger password (an ephemeral
# resource). Kept separate because Terraform 1.11's mock providers cannot serve ephemeral
# resources: the offline tests mock `aws` and give this alias a real, never-called provider.
provider "aws" {
  alias  = "secrets"
  region = var.aws_region
}
