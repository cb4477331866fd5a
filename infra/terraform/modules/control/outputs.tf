output "namespace" {
  description = "Namespace holding control's RayService and Redis."
  value       = kubernetes_namespace_v1.control.metadata[0].name
}

output "ingress_endpoint" {
  description = "Load balancer hostname or IP of the control API (the global DNS names it)."
  value       = module.rayservice.ingress_endpoint
}

output "in_cluster_url" {
  description = "control_url for a region in the same Kubernetes cluster (no trip through the load balancer)."
  value       = "http://control-ingress.${kubernetes_namespace_v1.control.metadata[0].name}.svc.cluster.local:8000/control"
}

output "redis_host" {
  description = "In-cluster DNS name of control's Redis (fleet:control:state)."
  value       = module.redis.host
}
