# One RayService: a Ray cluster (head + worker groups) running the Serve config generated from
# serve_config.yaml, and a LoadBalancer Service for its Serve proxies. Used by the region and
# control modules.
#
# kubernetes_manifest needs the RayService CRD at plan time: on a fresh cluster apply the KubeRay
# operator first (docs/operations.md, "Apply a region").

locals {
  # Secrets first: Kubernetes expands $(NAME) only from variables defined earlier in the list.
  env = concat(
    [for k in var.secret_env : { name = k, valueFrom = { secretKeyRef = { name = var.secret_name, key = k } } }],
    [for k, v in var.env : { name = k, value = v }],
  )

  config_map = "${var.name}-files"
  mounts     = [for f in keys(var.config_files) : { name = "files", mountPath = "${var.app_dir}/${f}", subPath = f, readOnly = true }]
  volumes    = length(var.config_files) > 0 ? [{ name = "files", configMap = { name = local.config_map } }] : []

  # A changed config file must reach every Ray process: the hash in the pod template makes it a
  # cluster change (a new cluster, then the switch, under NewCluster). KubeRay then leaves the
  # container's command to us and hands its own `ray start` over in KUBERAY_GEN_RAY_START_CMD.
  pod_annotations = {
    "edge-fleet/files-sha256"        = sha256(jsonencode(var.config_files))
    "ray.io/overwrite-container-cmd" = "true"
  }

  # Every node starts as `fleet up` starts a local one (fleet/runtime/pod.py): Ray's settings the
  # fleet chose, and Serve's HAProxy through the fleet's wrapper (arrival stamp, per-replica
  # limits, shedding at the door, the deadline no-bid; docs/ingress.md). Then KubeRay's command.
  # A node that cannot have them does not start (a stock node would serve without them).
  start_command = ["/bin/bash", "-c", "--"]
  start_args    = ["ulimit -n $${RAY_START_ULIMIT_OPEN_FILES:-65536}; fleet_env=\"$(python -m fleet.runtime.pod --dir ${local.run_dir})\" || exit 1; eval \"$fleet_env\"; exec /bin/bash -c \"$KUBERAY_GEN_RAY_START_CMD\""]
  run_dir       = "/tmp/fleet" # the wrapper's, on an emptyDir of the pod's own
  run_volume    = { name = "fleet-run", emptyDir = {} }
  run_mount     = { name = "fleet-run", mountPath = local.run_dir }

  container_security = {
    allowPrivilegeEscalation = false
    runAsNonRoot             = true
    capabilities             = { drop = ["ALL"] }
  }
  pod_security = {
    runAsNonRoot   = true
    seccompProfile = { type = "RuntimeDefault" }
  }

  head_template = {
    metadata = { labels = var.labels, annotations = local.pod_annotations }
    spec = {
      securityContext = local.pod_security
      volumes         = concat(local.volumes, [local.run_volume])
      containers = [{
        name       = "ray-head"
        image      = var.image
        workingDir = var.app_dir
        command    = local.start_command
        args       = local.start_args
        env        = local.env
        ports = [
          { name = "gcs-server", containerPort = 6379 },
          { name = "dashboard", containerPort = 8265 },
          { name = "client", containerPort = 10001 },
          { name = "serve", containerPort = 8000 }, # KubeRay's Serve service (the LB) targets this
        ]
        resources = {
          requests = { cpu = var.head.cpu, memory = var.head.memory }
          limits   = { cpu = var.head.cpu, memory = var.head.memory }
        }
        volumeMounts    = concat(local.mounts, [local.run_mount])
        securityContext = local.container_security
      }]
    }
  }

  worker_groups = [for g in var.worker_groups : {
    groupName      = g.name
    replicas       = g.replicas
    minReplicas    = g.min_replicas
    maxReplicas    = g.max_replicas
    rayStartParams = {} # GPUs are detected from the nvidia.com/gpu limit
    template = {
      metadata = { labels = var.labels, annotations = local.pod_annotations }
      spec = {
        securityContext = local.pod_security
        nodeSelector    = g.node_selector
        tolerations     = [for t in g.tolerations : { for k, v in t : k => v if v != null }]
        volumes         = concat(local.volumes, [local.run_volume])
        containers = [{
          name       = "ray-worker"
          image      = var.image
          workingDir = var.app_dir
          command    = local.start_command
          args       = local.start_args
          env        = local.env
          resources = {
            requests = merge({ cpu = g.cpu, memory = g.memory }, g.gpus > 0 ? { "nvidia.com/gpu" = tostring(g.gpus) } : {})
            limits   = merge({ cpu = g.cpu, memory = g.memory }, g.gpus > 0 ? { "nvidia.com/gpu" = tostring(g.gpus) } : {})
          }
          volumeMounts    = concat(local.mounts, [local.run_mount])
          securityContext = local.container_security
        }]
      }
    }
  }]
}

resource "kubernetes_config_map_v1" "files" {
  count = length(var.config_files) > 0 ? 1 : 0
  metadata {
    name      = local.config_map
    namespace = var.namespace
    labels    = var.labels
  }
  data = var.config_files
}

resource "kubernetes_manifest" "rayservice" {
  manifest = {
    apiVersion = "ray.io/v1"
    kind       = "RayService"
    metadata   = { name = var.name, namespace = var.namespace, labels = var.labels }
    spec = {
      serveConfigV2   = var.serve_config_yaml # in place: Serve redeploys, no new cluster
      upgradeStrategy = { type = var.upgrade_strategy }
      # KubeRay creates this Service and keeps its selector on the active cluster's healthy
      # proxies, across cluster upgrades. Its port is the head's "serve" port (8000); TLS ends at
      # the load balancer (ingress_annotations), since HAProxy in the pods serves plain HTTP.
      serveService = {
        metadata = { name = var.ingress_name, labels = var.labels, annotations = var.ingress_annotations }
        spec = {
          type                     = "LoadBalancer"
          loadBalancerSourceRanges = var.ingress_source_ranges
          ports                    = [{ name = "serve", port = 8000 }]
        }
      }
      rayClusterConfig = {
        rayVersion              = var.ray_version
        enableInTreeAutoscaling = true # GPU groups scale from zero when inference asks for GPUs
        autoscalerOptions       = { idleTimeoutSeconds = 300 }
        headGroupSpec = {
          # The dashboard (and `serve deploy` through it) stays inside the cluster: ClusterIP.
          serviceType    = "ClusterIP"
          rayStartParams = { "dashboard-host" = "0.0.0.0" }
          template       = local.head_template
        }
        workerGroupSpecs = local.worker_groups
      }
    }
  }

  wait {
    condition {
      type   = "Ready"
      status = "True"
    }
  }

  timeouts {
    create = var.ready_timeout
    update = var.ready_timeout
    delete = "10m"
  }

  depends_on = [kubernetes_config_map_v1.files]
}

# Read back once the RayService is Ready (KubeRay has created the Service by then).
data "kubernetes_service_v1" "ingress" {
  metadata {
    name      = var.ingress_name
    namespace = var.namespace
  }
  depends_on = [kubernetes_manifest.rayservice]
}
