terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.38.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17.0"
    }
  }

  # One state per region. Partial configuration: bucket and region come from backend.hcl (see
  # ../../backend.hcl.example), the key per region on the command line:
  #   terraform init -backend-config=../../backend.hcl -backend-config=key=edge-fleet/us-east.tfstate
  # Locking: S3's own lock file (Terraform >= 1.10; DynamoDB locking is deprecated since 1.11).
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
