# Credentials come from the environment (AWS_PROFILE / AWS_ACCESS_KEY_ID ...); none live here.
provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge(var.tags, {
      Project   = var.project
      ManagedBy = "terraform"
      Component = "training"
    })
  }
}
