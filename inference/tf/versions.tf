terraform {
  # Write-only arguments (password_wo, secret_string_wo) and ephemeral resources need 1.11.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}
