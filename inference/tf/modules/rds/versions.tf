terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws.secrets generates the master password (see the root providers.tf).
      configuration_aliases = [aws.secrets]
    }
  }
}
