# Hand these four values back to your credbroker provider.

output "project_number" {
  description = "The project number (as Google reports it for project_id)."
  value       = data.google_project.credbroker.number
}

output "pool_id" {
  description = "The workload identity pool id."
  value       = google_iam_workload_identity_pool.credbroker.workload_identity_pool_id
}

output "provider_id" {
  description = "The OIDC provider id."
  value       = google_iam_workload_identity_pool_provider.credbroker.workload_identity_pool_provider_id
}

output "service_account" {
  description = "The service account email."
  value       = google_service_account.credbroker.email
}

output "audience" {
  description = "The audience the broker's tokens carry (for your records)."
  value       = "https://iam.googleapis.com/projects/${data.google_project.credbroker.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}/providers/${google_iam_workload_identity_pool_provider.credbroker.workload_identity_pool_provider_id}"
}
