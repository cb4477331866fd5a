# The region's existing Kubernetes cluster: either a kubeconfig context, or host + CA + token
# (token from TF_VAR_kube_token, never a file in the repository).
provider "kubernetes" {
  config_path            = var.kube_host == null ? var.kubeconfig_path : null
  config_context         = var.kube_host == null ? var.kube_context : null
  host                   = var.kube_host
  cluster_ca_certificate = var.kube_ca_certificate
  token                  = var.kube_token
}

provider "helm" {
  kubernetes {
    config_path            = var.kube_host == null ? var.kubeconfig_path : null
    config_context         = var.kube_host == null ? var.kube_context : null
    host                   = var.kube_host
    cluster_ca_certificate = var.kube_ca_certificate
    token                  = var.kube_token
  }
}
