variable "name" {
  description = "Name of the StatefulSet and its Service (the Redis host is <name>.<namespace>.svc)."
  type        = string
  default     = "fleet-redis"
}

variable "namespace" {
  description = "Namespace to run Redis in (created by the calling module)."
  type        = string
}

variable "labels" {
  description = "Labels for every object (the required tags: app, region, owner, cost-center)."
  type        = map(string)
}

variable "password_secret_name" {
  description = "Kubernetes Secret holding the Redis password (never a literal in code)."
  type        = string
}

variable "password_secret_item" {
  description = "Key of the password inside password_secret_name."
  type        = string
  default     = "REDIS_PASSWORD"
}

variable "image" {
  description = "Redis image; pin a digest (redis@sha256:...) in production tfvars."
  type        = string
  default     = "redis:7.4.2"
}

variable "storage_size" {
  description = "Size of the persistent volume holding the append-only file."
  type        = string
  default     = "20Gi"
}

variable "storage_class" {
  description = "StorageClass of the volume (null: the cluster's default). Use an encrypted, retained class."
  type        = string
  default     = null
}

variable "maxmemory" {
  description = "Redis maxmemory; with noeviction a full Redis refuses writes rather than dropping ledger events."
  type        = string
  default     = "3gb"
}

variable "resources" {
  description = "CPU and memory requests/limits of the Redis container (memory above maxmemory: AOF rewrites fork)."
  type = object({
    cpu_request    = string
    cpu_limit      = string
    memory_request = string
    memory_limit   = string
  })
  default = {
    cpu_request    = "500m"
    cpu_limit      = "2"
    memory_request = "4Gi"
    memory_limit   = "6Gi"
  }
}
