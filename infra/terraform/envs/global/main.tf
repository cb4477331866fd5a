# Global DNS across the regions (AWS Route 53; modules/global). Apply after the regions:
#   terraform init  -backend-config=../../backend.hcl -backend-config=key=edge-fleet/global.tfstate
#   terraform apply   (terraform.tfvars here)
# Each region's load balancer endpoint is read from that region's state.

data "terraform_remote_state" "region" {
  for_each = var.regions
  backend  = "s3"
  config = {
    bucket = var.state_bucket
    region = var.state_bucket_region
    key    = "${var.state_key_prefix}/${each.key}.tfstate"
  }
}

locals {
  endpoints = {
    # null for a drained region whose Ray cluster is gone (serving = false)
    for name, r in var.regions : name => try(coalesce(r.endpoint, data.terraform_remote_state.region[name].outputs.ingress_endpoint), null)
  }
  control_endpoint = try(one([for s in data.terraform_remote_state.region : s.outputs.control_endpoint if s.outputs.control_endpoint != null]), null)
}

module "global" {
  source = "../../modules/global"

  zone_id  = var.zone_id
  bid_name = var.bid_name
  regions = {
    for name, r in var.regions : name => {
      endpoint   = local.endpoints[name]
      aws_region = r.aws_region
      drained    = r.drained
    }
  }
  health_check     = var.health_check
  control_name     = var.control_name
  control_endpoint = local.control_endpoint
  tags             = var.tags
}
