output "region" {
  description = "The region this state describes."
  value       = var.region
}

output "namespace" {
  description = "Namespace of the region's RayService and Redis."
  value       = module.region.namespace
}

output "ingress_endpoint" {
  description = "Load balancer hostname/IP of the region's Serve ingress (read by the global stack)."
  value       = module.region.ingress_endpoint
}

output "ready_path" {
  description = "The path the global health checks probe."
  value       = module.region.ready_path
}

output "control_url" {
  description = "The control URL this region's replicas sync with."
  value       = local.control_url
}

output "control_endpoint" {
  description = "Load balancer hostname/IP of control's API, where control runs here (else null)."
  value       = var.control_enabled ? module.control[0].ingress_endpoint : null
}
