# --- which region, whose ----------------------------------------------------------------------

variable "region" {
  description = "Region name as in regions.yaml; selects ../../generated/<region>.serve.yaml."
  type        = string
}

variable "tags" {
  description = "Required labels on every object: app, region (= region), owner, cost-center."
  type        = map(string)
  validation {
    condition     = alltrue([for k in ["app", "region", "owner", "cost-center"] : trimspace(lookup(var.tags, k, "")) != ""])
    error_message = "tags must set app, region, owner and cost-center."
  }
  validation {
    condition     = lookup(var.tags, "region", "") == var.region
    error_message = "tags.region must equal region."
  }
}

variable "serving" {
  description = "false: the region's Ray cluster and load balancer are removed, Redis and its data kept (drain first: docs/operations.md)."
  type        = bool
  default     = true
}

# --- the region's existing Kubernetes cluster ------------------------------------------------

variable "kubeconfig_path" {
  description = "Kubeconfig file used when kube_host is null."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Kubeconfig context of the region's cluster (used when kube_host is null)."
  type        = string
  default     = null
}

variable "kube_host" {
  description = "API server URL, to connect with kube_ca_certificate + kube_token instead of a kubeconfig."
  type        = string
  default     = null
}

variable "kube_ca_certificate" {
  description = "PEM CA certificate of the API server (with kube_host)."
  type        = string
  default     = null
}

variable "kube_token" {
  description = "Bearer token for the API server (with kube_host): TF_VAR_kube_token, never in a file here."
  type        = string
  default     = null
  sensitive   = true
}

# --- what runs ------------------------------------------------------------------------------

variable "image" {
  description = "Fleet image (Ray 2.60 + requirements.lock + this repository at /app), pinned tag or digest."
  type        = string
}

variable "install_kuberay_operator" {
  description = "Install the KubeRay operator in this cluster (false where another stack owns it)."
  type        = bool
  default     = true
}

variable "kuberay_chart_version" {
  description = "kuberay-operator Helm chart version."
  type        = string
  default     = "1.5.1"
}

variable "head" {
  description = "Head pod size of the region's Ray cluster."
  type = object({
    cpu    = string
    memory = string
  })
  default = { cpu = "4", memory = "16Gi" }
}

variable "cpu_workers" {
  description = "CPU worker group: fixed number of pods for the ingress replicas and cache shards."
  type = object({
    replicas = number
    cpu      = string
    memory   = string
  })
  default = { replicas = 2, cpu = "8", memory = "16Gi" }
}

variable "gpu_workers" {
  description = "GPU worker group for inference (used when serve_config.yaml prices remotely with num_gpus > 0)."
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
  description = "Node selector of the GPU worker group (the GPU node pool's label)."
  type        = map(string)
  default     = {}
}

variable "gpu_tolerations" {
  description = "Tolerations of the GPU worker group."
  type = list(object({
    key      = string
    operator = optional(string, "Exists")
    value    = optional(string)
    effect   = optional(string, "NoSchedule")
  }))
  default = [{ key = "nvidia.com/gpu" }]
}

variable "ingress_annotations" {
  description = "Annotations of the LoadBalancer Services (cloud LB type, TLS certificate)."
  type        = map(string)
  default     = {}
}

variable "ingress_source_ranges" {
  description = "CIDRs allowed to the region's bid endpoint (exchanges and DNS health checkers)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "redis_storage_size" {
  description = "Size of the region's Redis volume."
  type        = string
  default     = "50Gi"
}

variable "storage_class" {
  description = "StorageClass for the Redis volumes (null: the cluster default); an encrypted one."
  type        = string
  default     = null
}

# --- control --------------------------------------------------------------------------------

variable "control_enabled" {
  description = "Run central control in this region's cluster (exactly one region does)."
  type        = bool
  default     = false
}

variable "control_url" {
  description = "Control API base URL for this region (https://control.<domain>:8000/control); null only where control_enabled (then in-cluster)."
  type        = string
  default     = null
  validation {
    condition     = var.control_url != null || var.control_enabled
    error_message = "control_url is required in every region but the one with control_enabled."
  }
}

variable "control_namespace" {
  description = "Namespace of control (where control_enabled)."
  type        = string
  default     = "fleet-control"
}

variable "control_allowed_source_ranges" {
  description = "Egress CIDRs of the other regions' clusters allowed to control's load balancer (where control_enabled)."
  type        = list(string)
  default     = []
}

# --- secrets: sensitive variables (TF_VAR_... from a secret store) or existing Secrets ----------

variable "existing_secret_name" {
  description = "Existing Secret in the region namespace with FLEET_NOTICE_KEYS, FLEET_CONTROL_TOKEN, REDIS_PASSWORD."
  type        = string
  default     = null
}

variable "notice_keys" {
  description = "FLEET_NOTICE_KEYS (id:hexkey[,...]), shared by every region."
  type        = string
  default     = null
  sensitive   = true
}

variable "control_token" {
  description = "FLEET_CONTROL_TOKEN, shared by control and every region."
  type        = string
  default     = null
  sensitive   = true
}

variable "redis_password" {
  description = "Password of the region's Redis."
  type        = string
  default     = null
  sensitive   = true
}

variable "control_existing_secret_name" {
  description = "Existing Secret in control's namespace with FLEET_CONTROL_TOKEN and REDIS_PASSWORD."
  type        = string
  default     = null
}

variable "control_redis_password" {
  description = "Password of control's Redis (where control_enabled)."
  type        = string
  default     = null
  sensitive   = true
}
