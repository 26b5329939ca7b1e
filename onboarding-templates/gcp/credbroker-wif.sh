#!/usr/bin/env bash
# Connects a Google Cloud project to credbroker through Workload Identity Federation: no
# service-account key is created or handed over.
#
# Creates (or, run again, updates) in your project:
#   - a workload identity pool (POOL_ID, default "credbroker");
#   - an OIDC provider in it that trusts the broker's issuer (ISSUER_URL; with JWKS_FILE the
#     issuer's keys are pinned inline and Google never fetches them), maps
#     google.subject=assertion.sub and accepts only tokens whose sub is SUBJECT;
#   - a service account (SA_NAME, default "credbroker-reader") holding read-only roles
#     (ROLES, default "roles/iam.securityReviewer roles/cloudasset.viewer roles/browser":
#     configuration, IAM policies and the asset inventory, not data; roles/viewer is an
#     opt-in, since Viewers can read data too: BigQuery gives them every dataset's rows);
#   - roles/iam.workloadIdentityUser on that service account for exactly the one federated
#     principal principal://…/subject/SUBJECT (never a principalSet).
#
# Every input is a flag or an environment variable of the same name:
#   --project-id PROJECT_ID          your project id (e.g. acme-prod)
#   --project-number PROJECT_NUMBER  its project number (digits; checked against the id)
#   --issuer-url ISSUER_URL          the broker's issuer URL (https://…), from your provider
#   --subject SUBJECT                the subject your provider gave you (cb- + 40 characters)
#   --jwks-file JWKS_FILE            optional: the JWKS your provider gave you, pinned inline
#                                    (once pinned, every later run needs it: a run without it
#                                    would keep the old keys, and is refused)
#   --pool-id POOL_ID                default credbroker
#   --provider-id PROVIDER_ID        default credbroker
#   --sa-name SA_NAME                default credbroker-reader
#   --roles "ROLE ROLE…"             default "roles/iam.securityReviewer roles/cloudasset.viewer
#                                    roles/browser"
#
# Needs gcloud, authenticated as someone who may administer IAM in the project.
# `credbroker lint-templates` checks this file against policies/gcp.json.
set -euo pipefail

# The only roles this script grants (policies/gcp.json "roles"; the lint keeps them inside
# it). Owner, editor and admin roles are never granted.
readonly ALLOWED_ROLES=(
  roles/viewer
  roles/iam.securityReviewer
  roles/cloudasset.viewer
  roles/browser
  roles/logging.viewer
  roles/securitycenter.findingsViewer
)
readonly DEFAULT_ROLES="roles/iam.securityReviewer roles/cloudasset.viewer roles/browser"

die() {
  echo "credbroker-wif: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo pipefail$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

PROJECT_ID="${PROJECT_ID:-}"
PROJECT_NUMBER="${PROJECT_NUMBER:-}"
ISSUER_URL="${ISSUER_URL:-}"
SUBJECT="${SUBJECT:-}"
JWKS_FILE="${JWKS_FILE:-}"
POOL_ID="${POOL_ID:-credbroker}"
PROVIDER_ID="${PROVIDER_ID:-credbroker}"
SA_NAME="${SA_NAME:-credbroker-reader}"
ROLES="${ROLES:-$DEFAULT_ROLES}"

while [[ $# -gt 0 ]]; do
  flag="$1"
  case "$flag" in
    -h | --help)
      usage
      exit 0
      ;;
    --project-id | --project-number | --issuer-url | --subject | --jwks-file | --pool-id | \
      --provider-id | --sa-name | --roles)
      [[ $# -ge 2 ]] || die "$flag needs a value"
      value="$2"
      shift 2
      ;;
    --*=*)
      value="${flag#*=}"
      flag="${flag%%=*}"
      shift
      ;;
    *) die "unknown argument $flag (see --help)" ;;
  esac
  case "$flag" in
    --project-id) PROJECT_ID="$value" ;;
    --project-number) PROJECT_NUMBER="$value" ;;
    --issuer-url) ISSUER_URL="$value" ;;
    --subject) SUBJECT="$value" ;;
    --jwks-file) JWKS_FILE="$value" ;;
    --pool-id) POOL_ID="$value" ;;
    --provider-id) PROVIDER_ID="$value" ;;
    --sa-name) SA_NAME="$value" ;;
    --roles) ROLES="$value" ;;
    *) die "unknown flag $flag (see --help)" ;;
  esac
done

# Validate everything before the first change: a half-configured trust is worse than none.
[[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  die "PROJECT_ID '$PROJECT_ID' is not a project id (6-30 of a-z 0-9 -)"
[[ "$PROJECT_NUMBER" =~ ^[0-9]{1,20}$ ]] ||
  die "PROJECT_NUMBER '$PROJECT_NUMBER' must be the project number (digits), not the id"
[[ "$ISSUER_URL" =~ ^https://[^?#[:space:]]+$ ]] ||
  die "ISSUER_URL '$ISSUER_URL' must be https://… without query or fragment"
# The subject is the broker-generated value that ties this trust to your binding alone;
# without it every token the broker mints for anyone would be accepted here.
[[ "$SUBJECT" =~ ^cb-[A-Za-z0-9]{40}$ ]] ||
  die "SUBJECT '$SUBJECT' must be cb- followed by 40 letters or digits (from your provider)"
[[ "$POOL_ID" =~ ^[a-z0-9-]{4,32}$ && "$POOL_ID" != gcp-* ]] ||
  die "POOL_ID '$POOL_ID' must be 4-32 of a-z 0-9 - and not start with gcp-"
[[ "$PROVIDER_ID" =~ ^[a-z0-9-]{4,32}$ ]] ||
  die "PROVIDER_ID '$PROVIDER_ID' must be 4-32 of a-z 0-9 -"
[[ "$SA_NAME" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
  die "SA_NAME '$SA_NAME' must be 6-30 of a-z 0-9 -, starting with a letter"
if [[ -n "$JWKS_FILE" ]]; then
  [[ -r "$JWKS_FILE" && -s "$JWKS_FILE" ]] || die "JWKS_FILE '$JWKS_FILE' is not a readable file"
fi

read -r -a roles <<<"${ROLES//,/ }"
[[ ${#roles[@]} -gt 0 ]] || die "ROLES is empty"
for role in "${roles[@]}"; do
  allowed=false
  for ok in "${ALLOWED_ROLES[@]}"; do
    if [[ "$role" == "$ok" ]]; then allowed=true; fi
  done
  [[ "$allowed" == true ]] || die "role $role is not one of: ${ALLOWED_ROLES[*]}"
done

command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)"

actual_number="$(gcloud projects describe "$PROJECT_ID" --format='value(projectNumber)')"
[[ "$actual_number" == "$PROJECT_NUMBER" ]] ||
  die "project $PROJECT_ID has number '$actual_number', not $PROJECT_NUMBER"

sa_email="${SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
principal="principal://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/workloadIdentityPools/${POOL_ID}/subject/${SUBJECT}"

# An existing service account (an earlier run, or one made by hand) must hold no more than
# asked for, and be usable by our one subject alone: a run adds grants, it never removes
# them, so what it would leave in place is refused before anything changes.
if gcloud iam service-accounts describe "$sa_email" --project="$PROJECT_ID" >/dev/null 2>&1; then
  # Every (role, member) of the project's policy, compared here exactly (no server-side
  # filter: its matching rules differ between fields).
  held="$(gcloud projects get-iam-policy "$PROJECT_ID" \
    --flatten='bindings[].members' \
    --format='csv[no-heading](bindings.role,bindings.members)')" ||
    die "could not read the IAM policy of project $PROJECT_ID"
  while IFS=, read -r r m; do
    [[ "$m" == "serviceAccount:${sa_email}" ]] || continue
    wanted=false
    for w in "${roles[@]}"; do
      if [[ "$r" == "$w" ]]; then wanted=true; fi
    done
    [[ "$wanted" == true ]] ||
      die "service account $sa_email also holds $r, which --roles does not ask for: remove it first (gcloud projects remove-iam-policy-binding $PROJECT_ID --member=serviceAccount:$sa_email --role=$r --all), or name it in --roles if it is one of: ${ALLOWED_ROLES[*]}"
  done <<<"$held"
  # Who may act as the account (or administer it): our one subject, as workloadIdentityUser,
  # and nobody else, by any role.
  users="$(gcloud iam service-accounts get-iam-policy "$sa_email" --project="$PROJECT_ID" \
    --flatten='bindings[].members' \
    --format='csv[no-heading](bindings.role,bindings.members)')" ||
    die "could not read the IAM policy of service account $sa_email"
  while IFS=, read -r r m; do
    [[ -n "$m" ]] || continue
    [[ "$r" == "roles/iam.workloadIdentityUser" && "$m" == "$principal" ]] ||
      die "$m holds $r on $sa_email (only the federated subject may act as it): remove it first (gcloud iam service-accounts remove-iam-policy-binding $sa_email --project=$PROJECT_ID --role=$r --member=$m --all)"
  done <<<"$users"
fi

echo "== workload identity pool $POOL_ID"
if gcloud iam workload-identity-pools describe "$POOL_ID" \
  --project="$PROJECT_ID" --location=global >/dev/null 2>&1; then
  echo "exists"
  # The grant below names a subject of the pool, whichever of its providers vouches for it:
  # another provider whose subject mapping takes a value someone else controls (a user name,
  # an email) could vouch for ours. The pool must hold our provider alone.
  others="$(gcloud iam workload-identity-pools providers list \
    --project="$PROJECT_ID" --location=global --workload-identity-pool="$POOL_ID" \
    --format='value(name.basename())')" ||
    die "could not list the providers of pool $POOL_ID"
  while IFS= read -r other; do
    [[ -z "$other" || "$other" == "$PROVIDER_ID" ]] ||
      die "pool $POOL_ID also holds provider $other: its subjects could be granted the account too; use a pool of its own for credbroker (--pool-id)"
  done <<<"$others"
else
  gcloud iam workload-identity-pools create "$POOL_ID" \
    --project="$PROJECT_ID" \
    --location=global \
    --display-name="credbroker" \
    --description="Federation for the credbroker credential broker"
fi

echo "== OIDC provider $PROVIDER_ID"
provider_flags=(
  --project="$PROJECT_ID"
  --location=global
  --workload-identity-pool="$POOL_ID"
  --issuer-uri="$ISSUER_URL"
  --attribute-mapping="google.subject=assertion.sub"
  --attribute-condition="assertion.sub == '${SUBJECT}'"
)
if [[ -n "$JWKS_FILE" ]]; then
  provider_flags+=(--jwk-json-path="$JWKS_FILE")
fi
if gcloud iam workload-identity-pools providers describe "$PROVIDER_ID" \
  --project="$PROJECT_ID" --location=global --workload-identity-pool="$POOL_ID" \
  >/dev/null 2>&1; then
  # Run again (e.g. to re-pin the JWKS after a key rotation): update in place. Keys pinned
  # inline are never fetched from the issuer, and an update without --jwk-json-path keeps
  # them: a key the broker retired (even as compromised) would stay trusted.
  if [[ -z "$JWKS_FILE" ]]; then
    pinned="$(gcloud iam workload-identity-pools providers describe "$PROVIDER_ID" \
      --project="$PROJECT_ID" --location=global --workload-identity-pool="$POOL_ID" \
      --format='value(oidc.jwksJson)')"
    [[ -z "$pinned" ]] ||
      die "provider $PROVIDER_ID pins the broker's keys inline (oidc.jwksJson), and an update without --jwks-file keeps them: run again with --jwks-file and the broker's current JWKS (${ISSUER_URL}/.well-known/jwks.json)"
  fi
  gcloud iam workload-identity-pools providers update-oidc "$PROVIDER_ID" "${provider_flags[@]}"
else
  gcloud iam workload-identity-pools providers create-oidc "$PROVIDER_ID" "${provider_flags[@]}"
fi

echo "== service account $sa_email"
if gcloud iam service-accounts describe "$sa_email" --project="$PROJECT_ID" >/dev/null 2>&1; then
  echo "exists"
else
  gcloud iam service-accounts create "$SA_NAME" \
    --project="$PROJECT_ID" \
    --display-name="credbroker read-only" \
    --description="Read-only access for credbroker through workload identity federation"
fi

for role in "${roles[@]}"; do
  echo "== grant $role to $sa_email"
  gcloud projects add-iam-policy-binding "$PROJECT_ID" \
    --member="serviceAccount:${sa_email}" \
    --role="$role" \
    --condition=None >/dev/null
done

# Only the one federated identity whose sub is SUBJECT may act as the service account.
echo "== allow $principal to use $sa_email"
gcloud iam service-accounts add-iam-policy-binding "$sa_email" \
  --project="$PROJECT_ID" \
  --role="roles/iam.workloadIdentityUser" \
  --member="$principal" \
  --condition=None >/dev/null

cat <<EOF

Done. Hand these back to your credbroker provider:
  project number:   $PROJECT_NUMBER
  pool id:          $POOL_ID
  provider id:      $PROVIDER_ID
  service account:  $sa_email
EOF
