output "bid_fqdn" {
  description = "The exchanges' name for the fleet."
  value       = var.bid_name
}

output "serving_regions" {
  description = "Regions currently in the latency record set (not drained)."
  value       = sort(keys(local.serving))
}

output "health_check_ids" {
  description = "Route 53 health check id per region (CloudWatch metric HealthCheckStatus)."
  value       = { for k, hc in aws_route53_health_check.region : k => hc.id }
}

output "region_fqdns" {
  description = "Per-region names (<region>.<bid_name>) of the regions not drained."
  value       = { for k, r in aws_route53_record.region : k => r.fqdn }
}
