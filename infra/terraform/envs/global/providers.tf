# Route 53 is global; the provider's region only says where its API calls go.
provider "aws" {
  region = var.aws_region
  default_tags {
    tags = var.tags
  }
}
