# ap-southeast: terraform -chdir=infra/terraform/envs/region apply -var-file=../../regions/ap-southeast.tfvars
# (state key edge-fleet/ap-southeast.tfstate). Secrets are not here: TF_VAR_notice_keys, TF_VAR_control_token,
# TF_VAR_redis_password come from the secret store, or existing_secret_name names a Secret.

region = "ap-southeast"

tags = {
  app           = "edge-fleet"
  region        = "ap-southeast"
  owner         = "platform-team"
  "cost-center" = "rtb-bidding"
}

kube_context = "edge-fleet-ap-southeast"
image        = "registry.example.com/edge-fleet:0.1.0"

control_url = "https://control.edge-fleet.example.com:8000/control"

cpu_workers       = { replicas = 2, cpu = "8", memory = "16Gi" }
gpu_workers       = { min_replicas = 0, max_replicas = 1, gpus_per_worker = 1, cpu = "8", memory = "32Gi" }
gpu_node_selector = { "nvidia.com/gpu.present" = "true" }

redis_storage_size = "50Gi"
