terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100.0"
    }
  }

  # Partial configuration, as for the regions:
  #   terraform init -backend-config=../../backend.hcl -backend-config=key=edge-fleet/global.tfstate
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
