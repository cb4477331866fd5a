output "namespace" {
  description = "Namespace holding the region's RayService and Redis."
  value       = kubernetes_namespace_v1.region.metadata[0].name
}

output "rayservice_name" {
  description = "Name of the region's RayService (kubectl get rayservice -n <namespace>)."
  value       = var.serving ? module.rayservice[0].name : null
}

output "ingress_service" {
  description = "Name of the LoadBalancer Service in front of the region's Serve proxies."
  value       = var.serving ? module.rayservice[0].ingress_name : null
}

output "ingress_endpoint" {
  description = "Load balancer hostname or IP of the region's bid endpoint (the global DNS points at it)."
  value       = var.serving ? module.rayservice[0].ingress_endpoint : null
}

output "ready_path" {
  description = "Readiness path the DNS health checks probe."
  value       = "/${var.region}/ready"
}

output "redis_host" {
  description = "In-cluster DNS name of the region's Redis (cache write-through copy and ledger)."
  value       = module.redis.host
}

output "kuberay_operator" {
  description = "The KubeRay operator's Helm release (name/chart-version), or null when another stack owns it."
  value       = var.install_kuberay_operator ? "${helm_release.kuberay_operator[0].name}/${helm_release.kuberay_operator[0].version}" : null
}
