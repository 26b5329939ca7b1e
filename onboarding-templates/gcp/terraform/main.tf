# Workload Identity Federation for credbroker: the broker's OIDC tokens, and only those whose
# sub is var.subject, may act as one read-only service account. No key is created.

resource "google_iam_workload_identity_pool" "credbroker" {
  project                   = var.project_id
  workload_identity_pool_id = var.pool_id
  display_name              = "credbroker"
  description               = "Federation for the credbroker credential broker"
}

resource "google_iam_workload_identity_pool_provider" "credbroker" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.credbroker.workload_identity_pool_id
  workload_identity_pool_provider_id = var.provider_id
  display_name                       = "credbroker"
  description                        = "The credbroker issuer, pinned to one subject"

  # google.subject=assertion.sub is what the principal:// member below names.
  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }
  # Without this condition every token the broker mints, for any of its customers, would be
  # accepted by this provider: pin it to the subject generated for this connection.
  attribute_condition = "assertion.sub == \"${var.subject}\""

  oidc {
    issuer_uri        = var.issuer_url
    jwks_json         = var.jwks_json
    allowed_audiences = var.allowed_audiences
  }
}

resource "google_service_account" "credbroker" {
  project      = var.project_id
  account_id   = var.sa_name
  display_name = "credbroker read-only"
  description  = "Read-only access for credbroker through workload identity federation"
}

# Non-authoritative grants: other members of these roles are left alone.
resource "google_project_iam_member" "credbroker" {
  # roles/viewer (not granted by default: an opt-in through var.roles) is a basic role, but
  # the read-only one policies/gcp.json allows; owner and editor are refused by var.roles'
  # validation and by `credbroker lint-templates`.
  #checkov:skip=CKV_GCP_117:roles/viewer is an opt-in, the read-only basic role of policies/gcp.json; owner/editor are refused
  for_each = toset(var.roles)

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.credbroker.email}"
}

# The project's number as Google knows it, never taken on trust: the principal below names
# the pool by project number, and a mistyped number would name a pool of the same id in
# somebody else's project, whose owner could then act as the service account.
data "google_project" "credbroker" {
  project_id = var.project_id
}

# Exactly one federated identity, never a principalSet.
resource "google_service_account_iam_member" "credbroker_workload_identity_user" {
  service_account_id = google_service_account.credbroker.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/${data.google_project.credbroker.number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.credbroker.workload_identity_pool_id}/subject/${var.subject}"

  lifecycle {
    precondition {
      condition     = data.google_project.credbroker.number == var.project_number
      error_message = "project_number is not the number of project_id: copy it from `gcloud projects describe PROJECT_ID --format='value(projectNumber)'`."
    }
  }
}
