# A region's stack: the region module (KubeRay, the region's RayService, Redis, load balancer)
# and, in the one region where control lives (control_enabled), the control module beside it.
#   terraform init  -backend-config=../../backend.hcl -backend-config=key=edge-fleet/us-east.tfstate
#   terraform apply -var-file=../../regions/us-east.tfvars
# The Serve configs are the committed files under ../../generated/ (python -m fleet.infra.rayservice).

locals {
  generated = "${path.module}/../../generated"
  # A region in control's own cluster talks to it in-cluster; the others through its DNS name.
  control_url = coalesce(var.control_url, "http://control-ingress.${var.control_namespace}.svc.cluster.local:8000/control")
}

module "region" {
  source = "../../modules/region"

  region                   = var.region
  serving                  = var.serving
  tags                     = var.tags
  serve_config_yaml        = file("${local.generated}/${var.region}.serve.yaml")
  regions_yaml_template    = file("${local.generated}/regions.yaml")
  control_url              = local.control_url
  image                    = var.image
  install_kuberay_operator = var.install_kuberay_operator
  kuberay_chart_version    = var.kuberay_chart_version
  head                     = var.head
  cpu_workers              = var.cpu_workers
  gpu_workers              = var.gpu_workers
  gpu_node_selector        = var.gpu_node_selector
  gpu_tolerations          = var.gpu_tolerations
  ingress_annotations      = var.ingress_annotations
  ingress_source_ranges    = var.ingress_source_ranges
  redis_storage_size       = var.redis_storage_size
  redis_storage_class      = var.storage_class
  existing_secret_name     = var.existing_secret_name
  notice_keys              = var.notice_keys
  control_token            = var.control_token
  redis_password           = var.redis_password
}

module "control" {
  source = "../../modules/control"
  count  = var.control_enabled ? 1 : 0

  tags                  = var.tags
  namespace             = var.control_namespace
  kuberay_operator      = module.region.kuberay_operator
  serve_config_yaml     = file("${local.generated}/control.serve.yaml")
  image                 = var.image
  ingress_annotations   = var.ingress_annotations
  allowed_source_ranges = var.control_allowed_source_ranges
  redis_storage_class   = var.storage_class
  existing_secret_name  = var.control_existing_secret_name
  control_token         = var.control_token
  redis_password        = var.control_redis_password
}
