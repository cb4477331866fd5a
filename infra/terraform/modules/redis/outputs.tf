output "host" {
  description = "In-cluster DNS name of the Redis service."
  value       = "${kubernetes_service_v1.redis.metadata[0].name}.${var.namespace}.svc.cluster.local"
}

output "port" {
  description = "Redis port."
  value       = 6379
}
