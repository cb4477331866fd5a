variable "zone_id" {
  description = "Route 53 hosted zone (managed elsewhere) that holds the fleet's names."
  type        = string
}

variable "bid_name" {
  description = "The exchanges' one name for the fleet (e.g. bid.example.com): latency-based, health-checked."
  type        = string
}

variable "regions" {
  description = "Per region of regions.yaml: its load balancer endpoint, the AWS region whose latency stands for it, and whether it is drained (out of DNS)."
  type = map(object({
    endpoint   = optional(string)
    aws_region = string
    drained    = optional(bool, false)
  }))
  validation {
    condition     = alltrue([for r in values(var.regions) : r.drained || try(length(r.endpoint) > 0, false)])
    error_message = "every region not drained needs its load balancer endpoint (the region root's ingress_endpoint output)."
  }
}

variable "health_check" {
  description = "How Route 53 probes each region's /<region>/ready: protocol (HTTP or HTTPS), port (the Serve ingress's), interval (10 or 30 s), failures before unhealthy."
  type = object({
    protocol          = optional(string, "HTTPS")
    port              = optional(number, 8000)
    request_interval  = optional(number, 10)
    failure_threshold = optional(number, 3)
  })
  default = {}
  validation {
    condition     = contains(["HTTP", "HTTPS"], var.health_check.protocol) && contains([10, 30], var.health_check.request_interval)
    error_message = "health_check.protocol is HTTP or HTTPS; request_interval is 10 or 30."
  }
}

variable "ttl" {
  description = "TTL of the latency records in seconds (short: a failed region leaves resolvers quickly)."
  type        = number
  default     = 30
}

variable "control_name" {
  description = "Name for the control API (e.g. control.example.com); null: no record."
  type        = string
  default     = null
}

variable "control_endpoint" {
  description = "Load balancer endpoint of control (the control module's ingress_endpoint)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Required tags on the health checks: app, region, owner, cost-center."
  type        = map(string)
  validation {
    condition     = alltrue([for k in ["app", "region", "owner", "cost-center"] : trimspace(lookup(var.tags, k, "")) != ""])
    error_message = "tags must set app, region, owner and cost-center."
  }
}
