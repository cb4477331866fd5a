# Global DNS on AWS Route 53 (the one cloud-specific piece; the regions are plain Kubernetes):
# one name for the exchanges, answered with the region of lowest latency among the healthy ones.
# Each region has an HTTP(S) health check on its own readiness route, /<region>/ready, through its
# load balancer: a region whose Serve app is down (or whose load balancer is) leaves the answer
# set within about failure_threshold x request_interval seconds. A drained region (drained = true)
# has no record and no health check, so its Ray cluster can then be removed (serving = false).
#
# The endpoints are load balancer hostnames of any cloud, so the records are CNAMEs (not alias
# records, which only point at AWS resources).

locals {
  serving = { for name, r in var.regions : name => r if !r.drained }
}

resource "aws_route53_health_check" "region" {
  for_each          = local.serving
  fqdn              = each.value.endpoint
  port              = var.health_check.port
  type              = var.health_check.protocol
  resource_path     = "/${each.key}/ready"
  request_interval  = var.health_check.request_interval
  failure_threshold = var.health_check.failure_threshold
  measure_latency   = true
  tags              = merge(var.tags, { Name = "edge-fleet-${each.key}-ready", fleet-region = each.key })
}

resource "aws_route53_record" "bid" {
  for_each        = local.serving
  zone_id         = var.zone_id
  name            = var.bid_name
  type            = "CNAME"
  ttl             = var.ttl
  records         = [each.value.endpoint]
  set_identifier  = each.key
  health_check_id = aws_route53_health_check.region[each.key].id
  latency_routing_policy {
    region = each.value.aws_region
  }
}

# <region>.<bid_name>: each region by name (operators, and an exchange pinned to one region).
resource "aws_route53_record" "region" {
  for_each = local.serving
  zone_id  = var.zone_id
  name     = "${each.key}.${var.bid_name}"
  type     = "CNAME"
  ttl      = var.ttl
  records  = [each.value.endpoint]
}

# Control is one service in one region: a plain name, no failover (the regions keep serving on
# their last policy and leases while it is away; docs/control.md, "Autonomy").
resource "aws_route53_record" "control" {
  count   = var.control_name != null && var.control_endpoint != null ? 1 : 0
  zone_id = var.zone_id
  name    = var.control_name
  type    = "CNAME"
  ttl     = 60
  records = [var.control_endpoint]
}
