output "bid_fqdn" {
  description = "The exchanges' name for the fleet."
  value       = module.global.bid_fqdn
}

output "serving_regions" {
  description = "Regions in the latency record set (not drained)."
  value       = module.global.serving_regions
}

output "health_check_ids" {
  description = "Route 53 health check id per region."
  value       = module.global.health_check_ids
}

output "region_fqdns" {
  description = "Per-region DNS names."
  value       = module.global.region_fqdns
}
