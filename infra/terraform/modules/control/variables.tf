variable "tags" {
  description = "Required labels on every object: app, region (where control runs), owner, cost-center."
  type        = map(string)
  validation {
    condition     = alltrue([for k in ["app", "region", "owner", "cost-center"] : trimspace(lookup(var.tags, k, "")) != ""])
    error_message = "tags must set app, region, owner and cost-center."
  }
  validation {
    condition     = alltrue([for v in values(var.tags) : can(regex("^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", v))])
    error_message = "tag values are Kubernetes label values: 63 characters at most, alphanumerics, '-', '_', '.'."
  }
}

variable "kuberay_operator" {
  description = "The region module's kuberay_operator output: orders control after the operator (a RayService needs its CRD)."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace for control's RayService and Redis."
  type        = string
  default     = "fleet-control"
}

variable "serve_config_yaml" {
  description = "Control's serveConfigV2: infra/terraform/generated/control.serve.yaml."
  type        = string
}

variable "image" {
  description = "Fleet image (the same build as the regions'); a pinned tag or digest, never latest."
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

variable "head" {
  description = "Size of control's single Ray node (the control actor and its API; no worker groups)."
  type = object({
    cpu    = string
    memory = string
  })
  default = { cpu = "2", memory = "8Gi" }
}

variable "ingress_annotations" {
  description = "Annotations of control's LoadBalancer Service (cloud LB type, TLS certificate, internal)."
  type        = map(string)
  default     = {}
}

variable "allowed_source_ranges" {
  description = "CIDRs of the region clusters' egress (and operators) allowed to reach the control API."
  type        = list(string)
  validation {
    condition     = length(var.allowed_source_ranges) > 0 && !contains(var.allowed_source_ranges, "0.0.0.0/0") && !contains(var.allowed_source_ranges, "::/0")
    error_message = "allowed_source_ranges must list the regions' egress ranges; the control API is not for the whole internet."
  }
}

variable "redis_storage_size" {
  description = "Size of control's Redis volume (its state document, idempotency keys)."
  type        = string
  default     = "5Gi"
}

variable "redis_storage_class" {
  description = "StorageClass of control's Redis volume (null: the cluster default); pick an encrypted one."
  type        = string
  default     = null
}

variable "existing_secret_name" {
  description = "An existing Secret in the namespace with FLEET_CONTROL_TOKEN and REDIS_PASSWORD (then the two values below stay null)."
  type        = string
  default     = null
  validation {
    condition     = var.existing_secret_name != null || (var.control_token != null && var.redis_password != null)
    error_message = "Set existing_secret_name, or both control_token and redis_password (TF_VAR_... from a secret store)."
  }
}

variable "control_token" {
  description = "FLEET_CONTROL_TOKEN: the control API's bearer token (the regions hold the same)."
  type        = string
  default     = null
  sensitive   = true
}

variable "redis_password" {
  description = "Password of control's Redis (alphanumeric: it is part of REDIS_URL)."
  type        = string
  default     = null
  sensitive   = true
  validation {
    condition     = var.redis_password == null || can(regex("^[A-Za-z0-9]{24,}$", var.redis_password))
    error_message = "redis_password must be at least 24 alphanumeric characters."
  }
}
