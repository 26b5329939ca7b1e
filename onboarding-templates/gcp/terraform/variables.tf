variable "project_id" {
  description = "Your project id (e.g. acme-prod): where the pool, provider and service account are created."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 of a-z, 0-9 and -, starting with a letter."
  }
}

variable "project_number" {
  description = "The number of the same project (digits). The federated principal and the audience name the project by number, never by id."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{1,20}$", var.project_number))
    error_message = "project_number must be the project number (digits only), not the project id."
  }
}

variable "issuer_url" {
  description = "The broker's OIDC issuer URL (https://…), as your credbroker provider gave it."
  type        = string

  validation {
    condition     = can(regex("^https://[^?#[:space:]]+$", var.issuer_url))
    error_message = "issuer_url must be https://… without query or fragment."
  }
}

variable "subject" {
  description = "The subject your credbroker provider generated for this connection (cb- followed by 40 letters or digits). Only tokens carrying it are accepted."
  type        = string

  validation {
    condition     = can(regex("^cb-[A-Za-z0-9]{40}$", var.subject))
    error_message = "subject must be cb- followed by 40 letters or digits, exactly as your provider gave it."
  }
}

variable "jwks_json" {
  description = "Optional: the broker's JWKS (output of `credbroker issuer jwks`) to pin inline, so Google never fetches keys from the issuer. Re-pin when your provider asks (at every key rotation, and again once the old key is retired). Null: keys are fetched from the issuer's discovery document."
  type        = string
  default     = null

  validation {
    condition     = var.jwks_json == null || can(jsondecode(var.jwks_json).keys)
    error_message = "jwks_json must be a JSON Web Key Set ({\"keys\": [...]})."
  }
}

variable "allowed_audiences" {
  description = "Optional audiences to accept. Leave empty: the broker's tokens carry the provider's full resource name (https://iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER), which Google accepts when this list is empty."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.allowed_audiences) <= 10
    error_message = "At most 10 allowed audiences."
  }
}

variable "pool_id" {
  description = "Id of the workload identity pool."
  type        = string
  default     = "credbroker"

  validation {
    condition     = can(regex("^[a-z0-9-]{4,32}$", var.pool_id)) && !startswith(var.pool_id, "gcp-")
    error_message = "pool_id must be 4-32 of a-z, 0-9 and - and must not start with gcp-."
  }
}

variable "provider_id" {
  description = "Id of the OIDC provider in the pool."
  type        = string
  default     = "credbroker"

  validation {
    condition     = can(regex("^[a-z0-9-]{4,32}$", var.provider_id))
    error_message = "provider_id must be 4-32 of a-z, 0-9 and -."
  }
}

variable "sa_name" {
  description = "Account id of the read-only service account the broker acts as."
  type        = string
  default     = "credbroker-reader"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.sa_name))
    error_message = "sa_name must be 6-30 of a-z, 0-9 and -, starting with a letter."
  }
}

# The only roles this module grants: policies/gcp.json "roles" (`credbroker lint-templates`
# keeps the list inside it). Owner, editor and admin roles are never granted.
variable "roles" {
  description = "Read-only project roles for the service account. The default reads configuration, IAM policies and the asset inventory, not data; roles/viewer is an opt-in, since Viewers can read data too (BigQuery gives them every dataset's rows)."
  type        = list(string)
  default     = ["roles/iam.securityReviewer", "roles/cloudasset.viewer", "roles/browser"]

  validation {
    condition = length(var.roles) > 0 && alltrue([
      for r in var.roles : contains([
        "roles/viewer",
        "roles/iam.securityReviewer",
        "roles/cloudasset.viewer",
        "roles/browser",
        "roles/logging.viewer",
        "roles/securitycenter.findingsViewer",
      ], r)
    ])
    error_message = "roles must be among roles/viewer, roles/iam.securityReviewer, roles/cloudasset.viewer, roles/browser, roles/logging.viewer, roles/securitycenter.findingsViewer."
  }
}
