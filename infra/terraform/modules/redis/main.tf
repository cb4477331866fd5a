# Redis with persistence for the cache shards' write-through copy and the ledger's streams (or, in
# the control module, control's state document). A plain StatefulSet on the official image rather
# than a chart: a handful of settings matter here (AOF, noeviction, a password from a Secret, a
# PVC) and every one of them is visible below and to the security scan.

locals {
  selector = { "app.kubernetes.io/name" = var.name }
}

resource "kubernetes_service_v1" "redis" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = merge(var.labels, local.selector)
  }
  spec {
    selector = local.selector
    port {
      name        = "redis"
      port        = 6379
      target_port = 6379
    }
  }
}

resource "kubernetes_stateful_set_v1" "redis" {
  metadata {
    name      = var.name
    namespace = var.namespace
    labels    = merge(var.labels, local.selector)
  }
  spec {
    service_name = kubernetes_service_v1.redis.metadata[0].name
    replicas     = 1 # one writer; durability comes from the AOF on the volume
    selector {
      match_labels = local.selector
    }
    template {
      metadata {
        labels = merge(var.labels, local.selector)
      }
      spec {
        automount_service_account_token = false
        security_context {
          run_as_non_root = true
          run_as_user     = 999 # the official image's redis user
          fs_group        = 999
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name              = "redis"
          image             = var.image
          image_pull_policy = "Always"
          # appendonly + everysec: at most one second of acknowledged writes lost on a crash.
          # noeviction: the ledger's streams and aggregates must never be evicted for memory.
          # The password arrives from the Secret as an environment variable ($(...) is expanded
          # by Kubernetes), never written in this file or the image.
          args = [
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", "/data",
            "--maxmemory", var.maxmemory,
            "--maxmemory-policy", "noeviction",
            "--requirepass", "$(REDIS_PASSWORD)",
          ]
          env {
            name = "REDIS_PASSWORD"
            value_from {
              secret_key_ref {
                name = var.password_secret_name
                key  = var.password_secret_item
              }
            }
          }
          port {
            name           = "redis"
            container_port = 6379
          }
          resources {
            requests = {
              cpu    = var.resources.cpu_request
              memory = var.resources.memory_request
            }
            limits = {
              cpu    = var.resources.cpu_limit
              memory = var.resources.memory_limit
            }
          }
          liveness_probe {
            tcp_socket {
              port = 6379
            }
            initial_delay_seconds = 15
            period_seconds        = 10
          }
          readiness_probe {
            tcp_socket {
              port = 6379
            }
            period_seconds = 5
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "data"
            mount_path = "/data"
          }
        }
      }
    }
    volume_claim_template {
      metadata {
        name   = "data"
        labels = var.labels
      }
      spec {
        access_modes       = ["ReadWriteOnce"]
        storage_class_name = var.storage_class
        resources {
          requests = {
            storage = var.storage_size
          }
        }
      }
    }
    # Deleting the StatefulSet keeps the volume (Kubernetes' default): restore = re-apply.
    persistent_volume_claim_retention_policy {
      when_deleted = "Retain"
      when_scaled  = "Retain"
    }
  }
}

# Only pods of the same namespace (the Ray pods) reach Redis.
resource "kubernetes_network_policy_v1" "redis" {
  metadata {
    name      = "${var.name}-ingress"
    namespace = var.namespace
    labels    = var.labels
  }
  spec {
    pod_selector {
      match_labels = local.selector
    }
    policy_types = ["Ingress"]
    ingress {
      from {
        pod_selector {}
      }
      ports {
        port     = "6379"
        protocol = "TCP"
      }
    }
  }
}
