//! What the broker reads with the tokens it mints: our service principal's Azure role
//! assignments and visible subscriptions (ARM), and the app role assignments a consent
//! created (Graph). Every answer is untrusted: sizes are bounded, pages are bounded, and the
//! server's filters are re-checked here.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, TryStreamExt};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::claims::{self, parse_error};
use super::token::TokenAnswer;
use super::{denied, EntraApp, EntraBinding};
use crate::ProviderError;

/// Most pages followed through `nextLink`.
const MAX_PAGES: usize = 20;

impl EntraApp {
    /// `GET url` with `token`; the JSON answer and its request id. `what` names the call in
    /// errors.
    async fn get_json(
        &self,
        url: &str,
        token: &SecretString,
        budget: Duration,
        what: &str,
    ) -> Result<(Value, Option<String>), ProviderError> {
        let auth = crate::http::bearer(token.expose_secret())
            .ok_or_else(|| ProviderError::Internal("token is not a header value".into()))?;
        let request = http::Request::get(url)
            .header(http::header::AUTHORIZATION, auth)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| ProviderError::InvalidConfig(format!("{what}: URL is not a valid URI")))?;
        let (status, request_id, body) = self
            .http
            .send(
                request,
                self.per_request(budget),
                what,
                &[token.expose_secret()],
            )
            .await?;
        if status != 200 {
            let message = error_message(&body, token.expose_secret());
            return Err(if status == 429 || status >= 500 {
                ProviderError::Unavailable {
                    message: format!("{what}: HTTP {status}: {message}"),
                    upstream_request_id: request_id,
                }
            } else {
                denied(format!("{what}: HTTP {status}: {message}"), request_id)
            });
        }
        let v = serde_json::from_slice(&body).map_err(|_| ProviderError::Unavailable {
            message: format!("{what}: the answer is not JSON"),
            upstream_request_id: request_id.clone(),
        })?;
        Ok((v, request_id))
    }

    /// Every `value` item of a paged answer, following `nextLink` on the same host.
    async fn get_all(
        &self,
        first: String,
        base: &str,
        token: &SecretString,
        budget: Duration,
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut items = Vec::new();
        let mut url = Some(first);
        for _ in 0..MAX_PAGES {
            let Some(u) = url.take() else {
                return Ok(items);
            };
            let (v, _) = self.get_json(&u, token, budget, what).await?;
            let (page, next) = page_of(v, base).map_err(|m| ProviderError::Unavailable {
                message: format!("{what}: {m}"),
                upstream_request_id: None,
            })?;
            items.extend(page);
            url = next;
        }
        if url.is_some() {
            return Err(ProviderError::Unavailable {
                message: format!("{what}: more than {MAX_PAGES} pages"),
                upstream_request_id: None,
            });
        }
        Ok(items)
    }

    /// The role definition ids (lower-case GUIDs) our principal `oid` holds at `scope`
    /// (assignments at, above and below it), those given to a group it is a member of
    /// included: `assignedTo('{oid}')`, as `az role assignment list --include-groups` asks,
    /// not PROTOCOLS.md's `principalId eq '{oid}'`, which lists only what was given to the
    /// principal itself (Owner given to a group holding our app would go unseen).
    async fn role_assignments(
        &self,
        token: &SecretString,
        scope: &str,
        oid: &str,
        budget: Duration,
    ) -> Result<Vec<String>, ProviderError> {
        let base = &self.settings.arm_base_url;
        let filter: String =
            form_urlencoded::byte_serialize(format!("assignedTo('{oid}')").as_bytes()).collect();
        let url = format!(
            "{base}{scope}/providers/Microsoft.Authorization/roleAssignments?api-version=2022-04-01&$filter={filter}"
        );
        let what = format!("ARM role assignments at {scope}");
        let items = self.get_all(url, base, token, budget, &what).await?;
        roles_held(&items, oid).map_err(|m| ProviderError::Unavailable {
            message: format!("{what}: {m}"),
            upstream_request_id: None,
        })
    }

    /// The roles our principal `oid` holds at `scope` (read with the ARM token), all within
    /// the binding's ceiling.
    ///
    /// # Errors
    /// `Denied` naming a role outside the ceiling; others when ARM cannot be read.
    async fn roles_within_ceiling(
        &self,
        arm: &TokenAnswer,
        scope: &str,
        oid: &str,
        bound: &EntraBinding,
        budget: Duration,
    ) -> Result<Vec<String>, ProviderError> {
        let held = self
            .role_assignments(&arm.token, scope, oid, budget)
            .await?;
        if let Some(r) = held
            .iter()
            .find(|r| !bound.ceiling.arm_roles.contains_key(*r))
        {
            return Err(denied(
                format!(
                    "our service principal {oid} holds role {r} at {scope}, outside the binding's ceiling (policies/azure.json): no ARM token is handed out until that assignment is removed"
                ),
                arm.request_id.clone(),
            ));
        }
        Ok(held)
    }

    /// Checks what an ARM token of this binding can do: at each of the binding's scopes our
    /// principal holds only roles of the ceiling and, when every scope is a subscription, it
    /// sees no subscription outside them. Returns `[{scope, roles}]` (role names).
    ///
    /// # Errors
    /// `Denied` naming the role or subscription outside the binding.
    pub(super) async fn check_arm(
        &self,
        arm: &TokenAnswer,
        bound: &EntraBinding,
        budget: Duration,
    ) -> Result<Vec<Value>, ProviderError> {
        let oid = arm
            .claims
            .oid
            .as_deref()
            .and_then(claims::guid)
            .ok_or_else(|| denied("the ARM token names no principal".into(), None))?;
        let mut out = Vec::new();
        for scope in &bound.config.arm_scopes {
            let held = self
                .roles_within_ceiling(arm, scope, &oid, bound, budget)
                .await?;
            let names: Vec<String> = held
                .iter()
                .map(|r| {
                    bound
                        .ceiling
                        .arm_roles
                        .get(r)
                        .cloned()
                        .unwrap_or_else(|| r.clone())
                })
                .collect();
            out.push(json!({ "scope": scope, "roles": names }));
        }
        let all_subscriptions = bound
            .config
            .arm_scopes
            .iter()
            .all(|s| s.starts_with("/subscriptions/"));
        let base = &self.settings.arm_base_url;
        let url = format!("{base}/subscriptions?api-version=2022-12-01");
        let subscriptions = self
            .get_all(url, base, &arm.token, budget, "ARM subscriptions")
            .await?;
        let undeclared = undeclared_subscriptions(&subscriptions, &bound.config.arm_scopes);
        if all_subscriptions {
            if let Some(id) = undeclared.first() {
                return Err(denied(
                    format!(
                        "our service principal {oid} can read subscription {id}, which is not among the binding's arm_scopes (its roles there are unchecked): add the scope or remove the assignment"
                    ),
                    arm.request_id.clone(),
                ));
            }
            return Ok(out);
        }
        // A management-group scope: ARM's role-assignment list is documented for
        // subscription, resource-group and resource scopes only, so the read at the group is
        // not trusted to show what was given below it (Contributor on one of its
        // subscriptions), and a subscription outside the group is not covered at all. Every
        // subscription the principal sees outside the subscription scopes has its roles read
        // there (at, above and below it) and held to the ceiling, a few at a time.
        if undeclared.len() > MAX_UNDECLARED_SUBSCRIPTIONS {
            return Err(denied(
                format!(
                    "our service principal {oid} sees {} subscriptions outside the binding's subscription scopes, more than the {MAX_UNDECLARED_SUBSCRIPTIONS} whose roles a mint reads",
                    undeclared.len()
                ),
                arm.request_id.clone(),
            ));
        }
        if undeclared.iter().any(String::is_empty) {
            return Err(denied(
                "ARM listed a subscription without a subscription id: its roles cannot be checked"
                    .into(),
                arm.request_id.clone(),
            ));
        }
        let oid = oid.as_str();
        stream::iter(undeclared.iter().map(Ok::<_, ProviderError>))
            .try_for_each_concurrent(SUBSCRIPTION_READS_AT_ONCE, |id| async move {
                let scope = format!("/subscriptions/{id}");
                self.roles_within_ceiling(arm, &scope, oid, bound, budget)
                    .await
                    .map(|_| ())
            })
            .await?;
        Ok(out)
    }

    /// Proof that an administrator of `tenant` acted after `since`: at least one of the
    /// application permissions granted to our service principal there (Graph
    /// `appRoleAssignments`, readable with Application.Read.All) was created after it. A
    /// tenant that consented long ago for someone else shows only older grants, whatever
    /// the consent callback claims.
    ///
    /// # Errors
    /// `Denied` when no grant is newer; others when Graph cannot be read.
    pub(super) async fn check_fresh_grants(
        &self,
        graph: &TokenAnswer,
        tenant: &str,
        since: OffsetDateTime,
        budget: Duration,
    ) -> Result<(), ProviderError> {
        let base = &self.settings.graph_base_url;
        let url = format!(
            "{base}/v1.0/servicePrincipals(appId='{}')/appRoleAssignments",
            self.client_id()
        );
        let grants = self
            .get_all(url, base, &graph.token, budget, "Graph appRoleAssignments")
            .await?;
        // A minute of clock skew between Entra and us.
        let threshold = since - time::Duration::seconds(60);
        match newest_grant(&grants) {
            Some(t) if t >= threshold => Ok(()),
            _ => Err(denied(
                format!(
                    "no permission of our app in tenant {tenant} was granted after this link was issued: the consent was not given now. Either the administrator who signed in did not grant the permissions for the organisation on Entra's consent page (they open a new link and do), or the tenant consented earlier, perhaps for someone else (if it was the customer's own earlier consent, they delete the enterprise application and consent again through a new link)"
                ),
                graph.request_id.clone(),
            )),
        }
    }
}

/// The items of one page of a paged ARM or Graph answer, and the next page's URL: followed
/// only on `base` (a next page elsewhere would send our token there). Never panics on any
/// input (fuzzed).
///
/// # Errors
/// When the answer has no `value` list: read as an empty page, it would pass every check
/// made over the items (no role held, no subscription seen). When it names a next page the
/// broker will not follow (another host, not a string): the pages after it are unseen, and
/// a check over the items read so far would pass what they hold.
pub fn page_of(mut v: Value, base: &str) -> Result<(Vec<Value>, Option<String>), String> {
    // ARM names it `nextLink`, Graph `@odata.nextLink`; null or empty is no next page. Both
    // present must agree: one must not hide the other.
    let link = |k: &str| match v.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(other) => Some(other),
    };
    let named = match (link("nextLink"), link("@odata.nextLink")) {
        (Some(a), Some(b)) if a != b => {
            return Err("the answer names two different next pages".into());
        }
        (a, b) => a.or(b),
    };
    let next = match named {
        None => None,
        Some(Value::String(n)) if n.starts_with(&format!("{base}/")) => Some(n.clone()),
        Some(_) => {
            return Err(format!(
                "the answer's next page is not on {base}: the rest of the list cannot be read"
            ))
        }
    };
    match v.get_mut("value").map(Value::take) {
        Some(Value::Array(items)) => Ok((items, next)),
        _ => Err("the answer has no value list".into()),
    }
}

/// The role definition ids (lower-case GUIDs, each once) of the role assignments `items`
/// returned for `assignedTo(oid)`: those given to our principal `oid` (a lower-case GUID)
/// and those given to a group (ARM lists a group's assignment for each of its members; the
/// membership is ARM's to know). Only an assignment that names another user, application or
/// device is not ours, whatever the server's filter did; one of an unknown or absent type
/// counts. Never panics on any input (fuzzed).
///
/// # Errors
/// An assignment counted without a role definition id.
pub fn roles_held(items: &[Value], oid: &str) -> Result<Vec<String>, String> {
    let mut roles = Vec::new();
    for a in items {
        // Skipped only when it names, for certain, another single principal: a group (a
        // foreign one too), or an unknown or absent type, counts (failing closed).
        let principal = a.pointer("/properties/principalId").and_then(Value::as_str);
        let single = a
            .pointer("/properties/principalType")
            .and_then(Value::as_str)
            .is_some_and(|t| {
                ["User", "ServicePrincipal", "Device"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            });
        if single && principal.map(str::to_ascii_lowercase).as_deref() != Some(oid) {
            continue;
        }
        let role = a
            .pointer("/properties/roleDefinitionId")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .and_then(claims::guid)
            .ok_or("an assignment without a role definition id")?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok(roles)
}

/// The first subscription of `items` (an ARM subscription list) that is not among `scopes`:
/// its id as a lower-case GUID, or empty when it names none. Never panics on any input
/// (fuzzed).
pub fn undeclared_subscription(items: &[Value], scopes: &[String]) -> Option<String> {
    undeclared_subscriptions(items, scopes).into_iter().next()
}

/// Every subscription of `items` that is not among `scopes`, as
/// [`undeclared_subscription`] names them, each once.
pub fn undeclared_subscriptions(items: &[Value], scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for sub in items {
        let id = sub
            .get("subscriptionId")
            .and_then(Value::as_str)
            .and_then(claims::guid)
            .unwrap_or_default();
        let declared = scopes
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&format!("/subscriptions/{id}")));
        if !declared && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Most subscriptions outside a binding's subscription scopes whose roles an ARM mint reads
/// one by one (a binding with a management-group scope): beyond it the mint is refused.
const MAX_UNDECLARED_SUBSCRIPTIONS: usize = 64;

/// How many of those reads run at once.
const SUBSCRIPTION_READS_AT_ONCE: usize = 16;

/// When the newest of `items` (Graph app role assignments) was created, if any says so in
/// RFC 3339. Never panics on any input (fuzzed).
pub fn newest_grant(items: &[Value]) -> Option<OffsetDateTime> {
    items
        .iter()
        .filter_map(|g| g.get("createdDateTime").and_then(Value::as_str))
        .filter_map(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .max()
}

/// What a Graph or ARM refusal says (`error.message`, or an OAuth-style description), quoted
/// and never repeating the bearer it was sent (a proxy echoing the request back).
fn error_message(body: &[u8], bearer: &str) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(|s| crate::quoted_unless_echo(s, 200, &[bearer]))
        })
        .unwrap_or_else(|| {
            crate::quoted_unless_echo(&parse_error(body).description, 200, &[bearer])
        })
}

#[cfg(test)]
mod tests {
    use super::{error_message, page_of, roles_held};
    use serde_json::json;

    const BASE: &str = "https://management.azure.com";

    #[test]
    fn roles_of_our_principal_and_its_groups_count_and_no_one_elses() {
        let ours = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let assignment = |principal: &str, kind: &str, role: &str| {
            json!({"properties": {"principalId": principal, "principalType": kind,
                "roleDefinitionId": format!("/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/{role}")}})
        };
        let reader = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
        let contributor = "b24988ac-6180-42a0-ab88-20f7382dd24c";
        let owner = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
        let security_admin = "fb1c8493-542b-48eb-b624-b4c8fea62acd";
        let items = [
            assignment(&ours.to_uppercase(), "ServicePrincipal", reader),
            assignment("11111111-2222-4333-8444-555555555555", "Group", contributor),
            // Another principal's (a filter ARM did not apply): not ours.
            assignment("99999999-2222-4333-8444-555555555555", "User", owner),
            assignment(
                "99999999-2222-4333-8444-555555555556",
                "servicePrincipal",
                owner,
            ),
            // A type it cannot be sure of (absent, or one it does not know) counts.
            json!({"properties": {"principalId": "99999999-2222-4333-8444-555555555557",
                "roleDefinitionId": format!("/x/roleDefinitions/{security_admin}")}}),
            assignment(
                "99999999-2222-4333-8444-555555555558",
                "ForeignGroup",
                owner,
            ),
        ];
        assert_eq!(
            roles_held(&items, ours).unwrap(),
            vec![
                reader.to_owned(),
                contributor.to_owned(),
                security_admin.to_owned(),
                owner.to_owned()
            ]
        );
    }

    #[test]
    fn a_refusal_repeating_the_bearer_is_not_quoted() {
        let bearer = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature";
        let said = |message: &str| {
            error_message(
                json!({"error": {"code": "Authorization_RequestDenied", "message": message}})
                    .to_string()
                    .as_bytes(),
                bearer,
            )
        };
        assert!(said("Insufficient privileges").contains("Insufficient privileges"));
        for echoed in [
            format!("Bearer {bearer}"),
            format!("token {} was refused", &bearer[..40]),
        ] {
            let m = said(&echoed);
            assert!(!m.contains("eyJ0eXAi"), "{m}");
            // Or as an OAuth-style description, without error.message.
            let m = error_message(
                json!({"error": "invalid_request", "error_description": echoed})
                    .to_string()
                    .as_bytes(),
                bearer,
            );
            assert!(!m.contains("eyJ0eXAi"), "{m}");
        }
    }

    #[test]
    fn a_next_page_is_followed_on_its_host_or_refused() {
        let (items, next) = page_of(
            json!({"value": [1], "nextLink": format!("{BASE}/x?page=2")}),
            BASE,
        )
        .unwrap();
        assert_eq!(
            (items.len(), next.as_deref()),
            (1, Some("https://management.azure.com/x?page=2"))
        );
        for none in [
            json!({"value": []}),
            json!({"value": [], "@odata.nextLink": null}),
            json!({"value": [], "nextLink": ""}),
        ] {
            assert_eq!(page_of(none, BASE).unwrap().1, None);
        }
        // A null `nextLink` does not hide the `@odata.nextLink` beside it.
        let (_, next) = page_of(
            json!({"value": [], "nextLink": null, "@odata.nextLink": format!("{BASE}/p2")}),
            BASE,
        )
        .unwrap();
        assert_eq!(next.as_deref(), Some("https://management.azure.com/p2"));
        assert!(page_of(
            json!({"value": [], "nextLink": format!("{BASE}/a"), "@odata.nextLink": format!("{BASE}/b")}),
            BASE
        )
        .is_err());
        // A next page elsewhere (or written another way) would leave the rest unread: the
        // items read so far would pass checks the later pages fail.
        for elsewhere in [
            json!({"value": [], "nextLink": "https://evil.example/x"}),
            json!({"value": [], "nextLink": "https://management.azure.com:443/x"}),
            json!({"value": [], "nextLink": "https://management.azure.com.evil.example/x"}),
            json!({"value": [], "@odata.nextLink": 7}),
        ] {
            assert!(page_of(elsewhere.clone(), BASE).is_err(), "{elsewhere}");
        }
    }
}
