# One edge region on an existing Kubernetes cluster: the KubeRay operator, the region's
# RayService (its Serve application only; serveConfigV2 generated from serve_config.yaml), CPU and
# GPU worker groups, Redis with persistence, and the Serve ingress behind a LoadBalancer.
# Providers (kubernetes, helm) are configured by the caller, pointed at the region's cluster.

locals {
  namespace   = coalesce(var.namespace, "fleet-${var.region}")
  secret_name = coalesce(var.existing_secret_name, "fleet-secrets")

  # regions.yaml as shipped, with defaults.control.url pointing at central control: a region is
  # its own Ray cluster, so it syncs with control over HTTP (HttpLink) instead of an actor handle.
  # The file is rendered by fleet.infra.rayservice in regions.yaml's own key order (tier order
  # matters); only the URL is filled in here, since yamlencode() would sort the keys.
  regions_yaml = replace(var.regions_yaml_template, "$${control_url}", var.control_url)
}

resource "helm_release" "kuberay_operator" {
  count            = var.install_kuberay_operator ? 1 : 0
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_chart_version
  namespace        = var.kuberay_namespace
  create_namespace = true
  atomic           = true
  wait             = true
}

resource "kubernetes_namespace_v1" "region" {
  metadata {
    name   = local.namespace
    labels = var.tags
  }
}

# Created only from sensitive variables (TF_VAR_notice_keys etc., fed from a secret store), or
# not at all when existing_secret_name names one managed elsewhere. The values do land in the
# state: the backend bucket is encrypted and access-controlled (docs/operations.md).
resource "kubernetes_secret_v1" "fleet" {
  count = var.existing_secret_name == null ? 1 : 0
  metadata {
    name      = local.secret_name
    namespace = kubernetes_namespace_v1.region.metadata[0].name
    labels    = var.tags
  }
  data = {
    FLEET_NOTICE_KEYS   = var.notice_keys
    FLEET_CONTROL_TOKEN = var.control_token
    REDIS_PASSWORD      = var.redis_password
  }
}

module "redis" {
  source               = "../redis"
  namespace            = kubernetes_namespace_v1.region.metadata[0].name
  labels               = var.tags
  password_secret_name = local.secret_name
  storage_size         = var.redis_storage_size
  storage_class        = var.redis_storage_class
  depends_on           = [kubernetes_secret_v1.fleet]
}

module "rayservice" {
  source            = "../rayservice"
  count             = var.serving ? 1 : 0
  name              = var.region
  namespace         = kubernetes_namespace_v1.region.metadata[0].name
  labels            = var.tags
  image             = var.image
  app_dir           = var.app_dir
  ray_version       = var.ray_version
  serve_config_yaml = var.serve_config_yaml
  config_files      = { "regions.yaml" = local.regions_yaml }
  secret_name       = local.secret_name
  secret_env        = ["REDIS_PASSWORD", "FLEET_NOTICE_KEYS", "FLEET_CONTROL_TOKEN"]
  env = {
    REDIS_URL = "redis://:$(REDIS_PASSWORD)@${module.redis.host}:${module.redis.port}/0"
    # The ingress chosen by measurement (docs/ingress.md); Serve reads them when it starts.
    RAY_SERVE_ENABLE_HA_PROXY         = "1"
    RAY_SERVE_THROUGHPUT_OPTIMIZED    = "1"
    RAY_SERVE_HAPROXY_METRICS_ENABLED = "0"
  }
  head = var.head
  worker_groups = [
    {
      name         = "cpu"
      replicas     = var.cpu_workers.replicas
      min_replicas = var.cpu_workers.replicas
      max_replicas = var.cpu_workers.replicas
      cpu          = var.cpu_workers.cpu
      memory       = var.cpu_workers.memory
    },
    {
      name          = "gpu"
      replicas      = var.gpu_workers.min_replicas
      min_replicas  = var.gpu_workers.min_replicas
      max_replicas  = var.gpu_workers.max_replicas
      cpu           = var.gpu_workers.cpu
      memory        = var.gpu_workers.memory
      gpus          = var.gpu_workers.gpus_per_worker
      node_selector = var.gpu_node_selector
      tolerations   = var.gpu_tolerations
    },
  ]
  ingress_name          = "${var.region}-ingress"
  ingress_annotations   = var.ingress_annotations
  ingress_source_ranges = var.ingress_source_ranges
  depends_on            = [helm_release.kuberay_operator, module.redis]
}
