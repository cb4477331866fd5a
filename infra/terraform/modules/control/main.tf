# Central control: the control actor and its HTTP API (/control) in a RayService of its own, with
# its own Redis holding the state document (fleet:control:state). It runs in one region's
# Kubernetes cluster (the root applies it where control_enabled = true); that cluster's KubeRay
# operator is the region module's. The regions reach it over HTTP through control_url.

resource "kubernetes_namespace_v1" "control" {
  metadata {
    name   = var.namespace
    labels = var.tags
  }
}

resource "kubernetes_secret_v1" "control" {
  count = var.existing_secret_name == null ? 1 : 0
  metadata {
    name      = "fleet-control-secrets"
    namespace = kubernetes_namespace_v1.control.metadata[0].name
    labels    = var.tags
  }
  data = {
    FLEET_CONTROL_TOKEN = var.control_token
    REDIS_PASSWORD      = var.redis_password
  }
}

locals {
  secret_name = coalesce(var.existing_secret_name, "fleet-control-secrets")
}

module "redis" {
  source               = "../redis"
  namespace            = kubernetes_namespace_v1.control.metadata[0].name
  labels               = var.tags
  password_secret_name = local.secret_name
  storage_size         = var.redis_storage_size
  storage_class        = var.redis_storage_class
  maxmemory            = "1gb"
  resources            = { cpu_request = "250m", cpu_limit = "1", memory_request = "1536Mi", memory_limit = "2Gi" }
  depends_on           = [kubernetes_secret_v1.control]
}

# Only orders the RayService after the KubeRay operator, which the region module installs.
resource "terraform_data" "after_operator" {
  input = var.kuberay_operator
}

module "rayservice" {
  source            = "../rayservice"
  name              = "control"
  namespace         = kubernetes_namespace_v1.control.metadata[0].name
  labels            = var.tags
  image             = var.image
  app_dir           = var.app_dir
  ray_version       = var.ray_version
  serve_config_yaml = var.serve_config_yaml
  secret_name       = local.secret_name
  secret_env        = ["REDIS_PASSWORD", "FLEET_CONTROL_TOKEN"]
  env = {
    REDIS_URL                         = "redis://:$(REDIS_PASSWORD)@${module.redis.host}:${module.redis.port}/0"
    RAY_SERVE_ENABLE_HA_PROXY         = "1"
    RAY_SERVE_THROUGHPUT_OPTIMIZED    = "1"
    RAY_SERVE_HAPROXY_METRICS_ENABLED = "0"
  }
  head          = var.head
  worker_groups = []
  # Control is one detached actor whose state is one document: a zero-downtime upgrade would run
  # a second control beside the first, both writing that document. None: never two clusters; a
  # cluster change is a replace (docs/operations.md), which the regions ride out on their leases.
  upgrade_strategy      = "None"
  ingress_name          = "control-ingress"
  ingress_annotations   = var.ingress_annotations
  ingress_source_ranges = var.allowed_source_ranges
  depends_on            = [module.redis, terraform_data.after_operator]
}
