variable "aws_region" {
  description = "AWS region for the provider's API calls (Route 53 itself is global)."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Required tags on every AWS resource: app, region (global), owner, cost-center."
  type        = map(string)
  validation {
    condition     = alltrue([for k in ["app", "region", "owner", "cost-center"] : trimspace(lookup(var.tags, k, "")) != ""])
    error_message = "tags must set app, region, owner and cost-center."
  }
}

variable "state_bucket" {
  description = "S3 bucket of the regions' states (the same as in backend.hcl), read for their endpoints."
  type        = string
}

variable "state_bucket_region" {
  description = "AWS region of state_bucket."
  type        = string
}

variable "state_key_prefix" {
  description = "Prefix of the regions' state keys: <prefix>/<region>.tfstate."
  type        = string
  default     = "edge-fleet"
}

variable "zone_id" {
  description = "Route 53 hosted zone id holding bid_name and control_name."
  type        = string
}

variable "bid_name" {
  description = "The exchanges' name for the fleet (latency-routed across the healthy regions)."
  type        = string
}

variable "control_name" {
  description = "DNS name of the control API (null: none)."
  type        = string
  default     = null
}

variable "regions" {
  description = "Every region of regions.yaml: the AWS region whose latency stands for it, drained (out of DNS), and an endpoint override (null: from the region's state)."
  type = map(object({
    aws_region = string
    drained    = optional(bool, false)
    endpoint   = optional(string)
  }))
}

variable "health_check" {
  description = "Route 53 health check settings for /<region>/ready (protocol, port, interval, failure threshold)."
  type = object({
    protocol          = optional(string, "HTTPS")
    port              = optional(number, 8000)
    request_interval  = optional(number, 10)
    failure_threshold = optional(number, 3)
  })
  default = {}
}
