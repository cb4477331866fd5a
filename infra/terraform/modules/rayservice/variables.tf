variable "name" {
  description = "Name of the RayService (a region name, or \"control\")."
  type        = string
}

variable "namespace" {
  description = "Namespace of the RayService (created by the calling module)."
  type        = string
}

variable "labels" {
  description = "Labels for the RayService, its pods and its Serve service (the required tags)."
  type        = map(string)
}

variable "image" {
  description = "Fleet image: Ray + the locked dependencies + this repository at app_dir."
  type        = string
}

variable "app_dir" {
  description = "Where the repository lives in the image (the Ray processes' working directory)."
  type        = string
}

variable "ray_version" {
  description = "Ray version inside the image (must match requirements.lock)."
  type        = string
}

variable "serve_config_yaml" {
  description = "serveConfigV2: a file under infra/terraform/generated/ (python -m fleet.infra.rayservice)."
  type        = string
}

variable "secret_name" {
  description = "Kubernetes Secret whose keys secret_env become environment variables of every Ray container."
  type        = string
}

variable "secret_env" {
  description = "Keys of secret_name exported under the same names (set before env, so env may use $(KEY))."
  type        = list(string)
}

variable "env" {
  description = "Plain environment variables of every Ray container (no secrets here)."
  type        = map(string)
  default     = {}
}

variable "config_files" {
  description = "Files (name => content) mounted over <app_dir>/<name> from a ConfigMap; a change rolls the cluster."
  type        = map(string)
  default     = {}
}

variable "head" {
  description = "Head pod size (it also runs a Serve proxy and, with num_cpus 0, replicas)."
  type = object({
    cpu    = string
    memory = string
  })
}

variable "worker_groups" {
  description = "Worker groups: CPU groups for the ingress replicas, GPU groups (gpus > 0) for inference."
  type = list(object({
    name          = string
    replicas      = number
    min_replicas  = number
    max_replicas  = number
    cpu           = string
    memory        = string
    gpus          = optional(number, 0)
    node_selector = optional(map(string), {})
    tolerations = optional(list(object({
      key      = string
      operator = optional(string, "Exists")
      value    = optional(string)
      effect   = optional(string, "NoSchedule")
    })), [])
  }))
  default = []
}

variable "upgrade_strategy" {
  description = "NewCluster: rayClusterConfig changes bring up a new cluster and switch traffic (zero downtime). None: no second cluster ever (control: one state writer)."
  type        = string
  default     = "NewCluster"
  validation {
    condition     = contains(["NewCluster", "None"], var.upgrade_strategy)
    error_message = "upgrade_strategy must be NewCluster or None."
  }
}

variable "ingress_name" {
  description = "Name of the LoadBalancer Service KubeRay keeps pointed at the active cluster's Serve proxies."
  type        = string
}

variable "ingress_annotations" {
  description = "Annotations of the LoadBalancer Service (cloud-specific: TLS certificate, LB type, internal)."
  type        = map(string)
  default     = {}
}

variable "ingress_source_ranges" {
  description = "CIDRs allowed through the load balancer."
  type        = list(string)
}

variable "ready_timeout" {
  description = "How long apply waits for the RayService's Ready condition."
  type        = string
  default     = "30m"
}
