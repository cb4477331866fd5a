output "name" {
  description = "Name of the RayService."
  value       = var.name
}

output "ingress_name" {
  description = "Name of the LoadBalancer Service in front of the Serve proxies."
  value       = var.ingress_name
}

output "ingress_endpoint" {
  description = "Load balancer hostname (or IP) of the Serve ingress; null until the cloud assigns one."
  value = try(
    coalesce(
      data.kubernetes_service_v1.ingress.status[0].load_balancer[0].ingress[0].hostname,
      data.kubernetes_service_v1.ingress.status[0].load_balancer[0].ingress[0].ip,
    ),
    null,
  )
}
