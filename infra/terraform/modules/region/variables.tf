variable "region" {
  description = "Region name as in regions.yaml (us-east, eu-west, ...)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.region))
    error_message = "region must be a lowercase DNS label, as in regions.yaml."
  }
}

variable "tags" {
  description = "Required labels on every object: app, region (= var.region), owner, cost-center."
  type        = map(string)
  validation {
    condition     = alltrue([for k in ["app", "region", "owner", "cost-center"] : trimspace(lookup(var.tags, k, "")) != ""])
    error_message = "tags must set app, region, owner and cost-center."
  }
  validation {
    condition     = alltrue([for v in values(var.tags) : can(regex("^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", v))])
    error_message = "tag values are Kubernetes label values: 63 characters at most, alphanumerics, '-', '_', '.'."
  }
  validation {
    condition     = lookup(var.tags, "region", "") == var.region
    error_message = "tags.region must equal region."
  }
}

variable "serving" {
  description = "false: remove the region's RayService (every Ray pod and the load balancer) and keep Redis, its volume and the Secrets: a drained region at zero cost (docs/operations.md)."
  type        = bool
  default     = true
}

variable "namespace" {
  description = "Namespace for the region's RayService and Redis (null: fleet-<region>)."
  type        = string
  default     = null
}

variable "serve_config_yaml" {
  description = "The region's serveConfigV2: infra/terraform/generated/<region>.serve.yaml."
  type        = string
}

variable "regions_yaml_template" {
  description = "infra/terraform/generated/regions.yaml: regions.yaml with defaults.control.url = $${control_url}, filled with control_url and mounted over the image's copy."
  type        = string
  validation {
    condition     = strcontains(var.regions_yaml_template, "$${control_url}")
    error_message = "regions_yaml_template must be generated/regions.yaml (python -m fleet.infra.rayservice --all)."
  }
}

variable "control_url" {
  description = "Base URL of central control's API as the region reaches it (https://.../control); regions sync over HTTP."
  type        = string
  validation {
    condition     = can(regex("^https?://[^/]+/control$", var.control_url))
    error_message = "control_url must look like https://host[:port]/control."
  }
}

variable "image" {
  description = "Fleet image (Ray + requirements.lock + this repository at app_dir); a pinned tag or digest, never latest."
  type        = string
  validation {
    condition     = can(regex("(@sha256:[0-9a-f]{64}|:[A-Za-z0-9_.-]+)$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image must carry a version tag or a digest (not :latest)."
  }
}

variable "app_dir" {
  description = "Where the repository lives inside the image."
  type        = string
  default     = "/app"
}

variable "ray_version" {
  description = "Ray version in the image (requirements.lock pins ray 2.60.0)."
  type        = string
  default     = "2.60.0"
}

variable "install_kuberay_operator" {
  description = "Install the KubeRay operator (once per Kubernetes cluster; false where another stack owns it)."
  type        = bool
  default     = true
}

variable "kuberay_chart_version" {
  description = "Version of the kuberay-operator Helm chart (pinned; the operator version equals it)."
  type        = string
  default     = "1.5.1"
}

variable "kuberay_namespace" {
  description = "Namespace of the KubeRay operator."
  type        = string
  default     = "kuberay-system"
}

variable "head" {
  description = "Head pod size."
  type = object({
    cpu    = string
    memory = string
  })
  default = { cpu = "4", memory = "16Gi" }
}

variable "cpu_workers" {
  description = "CPU worker group for the ingress replicas and cache shards (fixed size: replicas use num_cpus 0, so the autoscaler sees no demand)."
  type = object({
    replicas = number
    cpu      = string
    memory   = string
  })
  default = { replicas = 2, cpu = "8", memory = "16Gi" }
}

variable "gpu_workers" {
  description = "GPU worker group for the inference deployment (serve_config.yaml args pricing: remote, num_gpus > 0); scales between min and max on GPU demand."
  type = object({
    min_replicas    = number
    max_replicas    = number
    gpus_per_worker = number
    cpu             = string
    memory          = string
  })
  default = { min_replicas = 0, max_replicas = 2, gpus_per_worker = 1, cpu = "8", memory = "32Gi" }
}

variable "gpu_node_selector" {
  description = "Node selector of the GPU worker group (e.g. the GPU node pool's label)."
  type        = map(string)
  default     = {}
}

variable "gpu_tolerations" {
  description = "Tolerations of the GPU worker group (GPU node pools are usually tainted)."
  type = list(object({
    key      = string
    operator = optional(string, "Exists")
    value    = optional(string)
    effect   = optional(string, "NoSchedule")
  }))
  default = [{ key = "nvidia.com/gpu" }]
}

variable "ingress_annotations" {
  description = "Annotations of the region's LoadBalancer Service (cloud LB type, TLS certificate)."
  type        = map(string)
  default     = {}
}

variable "ingress_source_ranges" {
  description = "CIDRs allowed to the bid endpoint: the exchanges and the DNS health checkers."
  type        = list(string)
  # Open by default on purpose: exchanges call from many ranges and the DNS health checkers must
  # reach /<region>/ready; the bid path admits requests itself (IVT, blocklists) and notices are
  # HMAC-signed. Narrow it where the exchanges publish their egress ranges.
  default = ["0.0.0.0/0"]
}

variable "redis_storage_size" {
  description = "Size of the Redis volume (AOF of the cache write-through copy and the ledger)."
  type        = string
  default     = "50Gi"
}

variable "redis_storage_class" {
  description = "StorageClass of the Redis volume (null: the cluster default); pick an encrypted one."
  type        = string
  default     = null
}

variable "existing_secret_name" {
  description = "An existing Secret in the namespace with FLEET_NOTICE_KEYS, FLEET_CONTROL_TOKEN and REDIS_PASSWORD (then the three values below stay null)."
  type        = string
  default     = null
  validation {
    condition     = var.existing_secret_name != null || (var.notice_keys != null && var.control_token != null && var.redis_password != null)
    error_message = "Set existing_secret_name, or all of notice_keys, control_token and redis_password (TF_VAR_... from a secret store)."
  }
}

variable "notice_keys" {
  description = "FLEET_NOTICE_KEYS (id:hexkey[,...]): notice signing keys, the same in every region."
  type        = string
  default     = null
  sensitive   = true
  validation {
    condition     = var.notice_keys == null || can(regex("^[A-Za-z0-9_-]+:[0-9a-fA-F]{32,}(,[A-Za-z0-9_-]+:[0-9a-fA-F]{32,})*$", var.notice_keys))
    error_message = "notice_keys must be id:hexkey[,id:hexkey...] with keys of at least 16 bytes."
  }
}

variable "control_token" {
  description = "FLEET_CONTROL_TOKEN: bearer token of the control API, the same as control's."
  type        = string
  default     = null
  sensitive   = true
}

variable "redis_password" {
  description = "Password of the region's Redis (alphanumeric: it is part of REDIS_URL)."
  type        = string
  default     = null
  sensitive   = true
  validation {
    condition     = var.redis_password == null || can(regex("^[A-Za-z0-9]{24,}$", var.redis_password))
    error_message = "redis_password must be at least 24 alphanumeric characters."
  }
}
