# us-east: terraform -chdir=infra/terraform/envs/region apply -var-file=../../regions/us-east.tfvars
# (state key edge-fleet/us-east.tfstate). Secrets are not here: TF_VAR_notice_keys, TF_VAR_control_token,
# TF_VAR_redis_password come from the secret store, or existing_secret_name names a Secret.

region = "us-east"

tags = {
  app           = "edge-fleet"
  region        = "us-east"
  owner         = "platform-team"
  "cost-center" = "rtb-bidding"
}

kube_context = "edge-fleet-us-east"
image        = "registry.example.com/edge-fleet:0.1.0"

# Central control runs in this cluster (its own RayService and Redis, namespace fleet-control);
# this region reaches it in-cluster, the others at control.edge-fleet.example.com.
control_enabled = true
control_allowed_source_ranges = [
  "198.51.100.0/28", # eu-west cluster egress (NAT) - replace with the real ranges
  "203.0.113.0/28",  # ap-southeast cluster egress (NAT)
]

cpu_workers       = { replicas = 2, cpu = "8", memory = "16Gi" }
gpu_workers       = { min_replicas = 0, max_replicas = 2, gpus_per_worker = 1, cpu = "8", memory = "32Gi" }
gpu_node_selector = { "nvidia.com/gpu.present" = "true" }

redis_storage_size = "50Gi"
