//! The install flow: the install link (`GET /callbacks/{provider}/start`) binds the state to
//! a browser; the setup callback (`GET /callbacks/{provider}/setup`) proves who installed,
//! checks the pinned account, and binds and probes the installation.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{json, Value};

use super::{anonymous, rejected, sha256_hex, CallbackResult, CallbackService, Failure};
use credbroker_providers::Provider;

use crate::admin::{AdminOp, NewBinding};
use crate::api_error::{ApiError, ErrorCode};
use crate::audit::AuditEvent;
use crate::ids::{BindingId, TenantId};
use crate::model::now_rfc3339;
use crate::store::records::{outstanding_id, AccountPin, CallbackState, LinkPin, Unclaimed};
use crate::store::Batch;

/// How many times an install link may be opened before it must be re-issued.
pub const MAX_LINK_OPENS: u32 = 5;

/// The prefix of the cookie that binds an opened install link to the browser that opened
/// it. `__Host-`: Secure, no Domain, Path=/ — no other host can set or read it.
pub const INSTALL_COOKIE: &str = "__Host-credbroker-install";

/// The install cookie's name for link `state`: one per link (a digest of the state, which
/// the name must not carry), so a browser made to open another link — a page of whoever
/// holds a link of their own navigating it to `/start` — never replaces this one's.
pub fn install_cookie_name(state: &str) -> String {
    let digest = sha256_hex(state.as_bytes());
    format!("{INSTALL_COOKIE}-{}", digest.get(..16).unwrap_or(&digest))
}

/// The value of link `state`'s install cookie in a request's `Cookie` headers, if any.
/// Never panics on any input (fuzzed).
pub fn install_cookie(headers: &HeaderMap, state: &str) -> Option<String> {
    cookie(headers, &install_cookie_name(state))
}

/// The value of cookie `name` in a request's `Cookie` headers, if any (install and intake
/// cookies). Never panics on any input (fuzzed through [`install_cookie`]).
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

/// The install link's state in its query string: 1 to 128 ASCII letters and digits (what
/// the broker issues), or none. Never panics on any input (fuzzed).
pub fn link_state(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == "state"))
        .map(|(_, v)| v)
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
}

/// Why a link whose issuer may no longer act is refused (the browser and the audit record).
const ISSUER_GONE: &str =
    "this install link is no longer valid: the operator who issued it may no longer act; ask for a new one";

/// Why a link an operator revoked after it was opened is refused.
const REVOKED: &str = "this install link was revoked; ask for a new one";

/// Why a link whose tenant was removed since it was issued is refused.
const TENANT_GONE: &str =
    "this install link is no longer valid: the tenant it was issued for was removed since; ask for a new one";

/// When a link was issued, Unix seconds: as recorded, or (states written before it was)
/// its expiry less the configured lifetime.
fn link_issued_at(read: &CallbackState, ttl_s: u64) -> i64 {
    read.issued_at
        .unwrap_or_else(|| read.expires_at - i64::try_from(ttl_s).unwrap_or(3600))
}

/// The refusal of a state that is unknown, or was used (or belongs to another provider).
const USED: &str = "unknown or already used state";

/// An error of a step taken on behalf of a link's issuer, as the customer's browser is told
/// it: an issuer who may no longer act is not named (the audit record names them).
fn for_the_browser(e: ApiError) -> ApiError {
    if e.code == ErrorCode::OperatorRequired {
        rejected(ISSUER_GONE)
    } else {
        e
    }
}

impl CallbackService {
    /// Whether the operator who issued a link (`issuer`, as the link recorded it) may no
    /// longer act: disabled or removed.
    ///
    /// # Errors
    /// The store could not be read.
    async fn issuer_gone(
        &self,
        issuer: Option<&str>,
        revision: Option<u64>,
    ) -> Result<bool, Failure> {
        match self.admin.issuer_alive(issuer, revision).await {
            Ok(alive) => Ok(!alive),
            Err(_) => Err(anonymous(ApiError::new(
                ErrorCode::Internal,
                "store read failed",
            ))),
        }
    }

    /// Whether the tenant a link was issued for is still the one it was issued for: it exists
    /// and was created no later than the link (`issued_at`, Unix seconds). A tenant removed
    /// since, and perhaps created again under its id for someone else, is not.
    ///
    /// # Errors
    /// The store could not be read.
    async fn tenant_held(&self, read: &CallbackState) -> Result<bool, Failure> {
        let Ok(id) = TenantId::parse(&read.tenant) else {
            return Ok(false);
        };
        let tenant = self
            .core
            .records
            .tenant(&id)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?;
        let issued_at = link_issued_at(read, self.core.callback_state_ttl_s());
        Ok(tenant.is_some_and(|t| t.value.created_by(issued_at)))
    }

    /// `GET /callbacks/{provider}/start?state=…`: the install link. The browser that opens it
    /// gets a random nonce as an `HttpOnly` cookie and the state records the nonce's hash
    /// (audited); the setup callback later requires that cookie. Each opening replaces the
    /// previous browser (mail and chat link scanners open links before people do), up to
    /// [`MAX_LINK_OPENS`]; whoever finishes the install must have opened the link last, and the
    /// installation must still belong to the pinned account. Returns the provider's install
    /// page, the `Set-Cookie` value and the audit id.
    pub(super) async fn handle_start(
        &self,
        provider: &dyn Provider,
        query: &str,
        event: &mut AuditEvent,
    ) -> Result<(String, String, String), Failure> {
        let Some(cb) = provider.callbacks() else {
            return Err(anonymous(ApiError::new(
                ErrorCode::NotFound,
                "no such callback",
            )));
        };
        let state = link_state(query)
            .ok_or_else(|| anonymous(rejected("state is missing or malformed")))?;
        let (key, read) = self
            .core
            .records
            .callback_state(&state)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?
            .ok_or_else(|| anonymous(rejected(USED)))?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if read.provider != provider.id() || read.expires_at < now {
            return Err(anonymous(rejected(
                "this install link is expired or for another provider; ask for a new one",
            )));
        }
        if read.revoked {
            return Err(anonymous(rejected(REVOKED)));
        }
        if read.used {
            return Err(anonymous(rejected(USED)));
        }
        // A link pinned to an account that is itself the identifier (Entra's tenant GUID):
        // its opening passes through the account's pin record as read now, before the checks
        // below, as an issuance does. An issuance elsewhere that judged this link unopened
        // and its issuer gone, committing meanwhile, fails this opening; or this opening
        // fails it (either way, never a second link out while this one is opened).
        let link_pin = match read.pin.as_ref().and_then(|p| {
            cb.pin_identifier(&credbroker_providers::InstalledAccount {
                login: p.login.clone(),
                id: p.id,
            })
            .map(|_| p.login.clone())
        }) {
            Some(login) => Some(
                self.core
                    .records
                    .link_pin(provider.id(), &login)
                    .await
                    .map_err(|_| {
                        anonymous(ApiError::new(ErrorCode::Internal, "store read failed"))
                    })?,
            ),
            None => None,
        };
        if !self.tenant_held(&read).await? {
            return Err(anonymous(rejected(TENANT_GONE)));
        }
        if read.opens >= MAX_LINK_OPENS {
            return Err(anonymous(rejected(
                "this install link was opened too many times; ask for a new one",
            )));
        }
        if self
            .issuer_gone(read.creator.as_deref(), read.creator_revision)
            .await?
        {
            return Err(anonymous(rejected(ISSUER_GONE)));
        }
        let nonce = crate::admin::random_alphanumeric(43)?;
        let mut batch = Batch::new();
        if let Some((pin_key, pin_read)) = &link_pin {
            batch.pass_link_pin(
                pin_key,
                pin_read.as_ref(),
                &LinkPin::passed(pin_read.as_ref().map(|r| &r.value), &read, now),
            );
        }
        batch.start_callback_state(&key, &read, &sha256_hex(nonce.as_bytes()));
        event.tenant = Some(read.tenant.clone());
        event.outcome = "allowed".into();
        event.detail = Some(format!(
            "install link {} opened (opening {} of at most {MAX_LINK_OPENS}); state bound to this browser",
            outstanding_id(&key).unwrap_or_default(),
            read.opens + 1
        ));
        let receipt = self.commit_locked(event.clone(), batch, false).await?;
        let max_age = (read.expires_at - now).max(1);
        let cookie = format!(
            "{}={nonce}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
            install_cookie_name(&state)
        );
        let pin = read
            .pin
            .as_ref()
            .map(|p| credbroker_providers::InstalledAccount {
                login: p.login.clone(),
                id: p.id,
            });
        Ok((
            cb.install_url(&state, pin.as_ref()),
            cookie,
            receipt.audit_id,
        ))
    }

    /// Returns the response and the audit id of the callback's own record.
    pub(super) async fn handle_setup(
        &self,
        provider: Arc<dyn Provider>,
        query: &str,
        headers: &HeaderMap,
        event: &mut AuditEvent,
    ) -> CallbackResult {
        let Some(cb) = provider.callbacks() else {
            return Err(anonymous(ApiError::new(
                ErrorCode::NotFound,
                "no such callback",
            )));
        };
        let mut redirect = cb.parse_setup(query).map_err(|m| anonymous(rejected(m)))?;
        // Looked up without the admin lock: an unknown state (the common anonymous probe)
        // is refused before it can queue behind operators' changes. Consumption below is a
        // precondition of its batch, so concurrent uses cannot both win.
        let (state_key, read) = self
            .core
            .records
            .callback_state(&redirect.state)
            .await
            .map_err(|_| anonymous(ApiError::new(ErrorCode::Internal, "store read failed")))?
            .ok_or_else(|| anonymous(rejected(USED)))?;
        let expired = read.expires_at < time::OffsetDateTime::now_utc().unix_timestamp();
        // A state of another provider is not this callback's to consume: refused before
        // anything is written, and counted like an unknown one (anyone holding some install
        // link could otherwise repeat it here for one fsynced record each).
        if read.provider != provider.id() {
            return Err(anonymous(rejected(USED)));
        }
        // A revoked or used link (its tombstone, kept until it expires) completes nothing;
        // refused before anything is written, and counted like an unknown state: the first
        // return through it was audited, its revocation too.
        if read.spent() {
            return Err(anonymous(rejected(if read.revoked {
                REVOKED
            } else {
                USED
            })));
        }
        // The installation the redirect names, or (Entra, whose redirect names none) the one
        // the operator pinned, which the provider's proof must then establish. A redirect
        // reporting the upstream refused may still name nothing: its state is consumed and
        // the refusal audited below all the same.
        if provider.exclusive_identifiers(&redirect.config).is_empty() {
            if let Some(config) = read.pin.as_ref().and_then(|p| {
                cb.pin_config(&credbroker_providers::InstalledAccount {
                    login: p.login.clone(),
                    id: p.id,
                })
            }) {
                redirect.config = config;
            }
        }
        let identifiers = provider.exclusive_identifiers(&redirect.config);
        let identifier = match (identifiers.first(), &redirect.refused) {
            (Some(i), _) => i.clone(),
            (None, Some(_)) => "(nothing)".to_owned(),
            (None, None) => return Err(anonymous(rejected("redirect names no installation"))),
        };
        let tenant =
            TenantId::parse(&read.tenant).map_err(|_| rejected("state record is corrupt"))?;
        let governance = read.governance.clone();
        event.tenant = Some(tenant.to_string());
        // The install must finish in the browser that opened the link (its cookie), or the
        // callback URL alone — state included — is worth nothing.
        let cookie_ok = match (&read.browser, install_cookie(headers, &redirect.state)) {
            (Some(expected), Some(nonce)) => {
                crate::hex_text::sha256_matches(expected, nonce.as_bytes())
            }
            _ => false,
        };
        // A link acts for the operator who issued it: once they are disabled or removed, it
        // binds nothing (checked again at each commit below, which may come seconds later).
        let issuer_gone = self
            .issuer_gone(read.creator.as_deref(), read.creator_revision)
            .await?;
        let tenant_gone = !self.tenant_held(&read).await?;
        let upstream_refusal = redirect
            .refused
            .as_ref()
            .map(|r| format!("the provider reported the install or consent did not happen ({r}); nothing was bound"));
        let refusal = if expired {
            Some("state expired; start onboarding again")
        } else if !cookie_ok {
            Some("the install did not finish in the browser that opened the install link (cookie missing or different); start onboarding again")
        } else if issuer_gone {
            Some(ISSUER_GONE)
        } else if tenant_gone {
            Some(TENANT_GONE)
        } else {
            upstream_refusal.as_deref()
        };
        // The state is consumed now, whatever follows: single use. The record saying so is
        // durable first (the one audited pipeline).
        event.outcome = if refusal.is_some() {
            "denied"
        } else {
            "allowed"
        }
        .into();
        event.detail = Some(format!(
            "state of install link {} for tenant {tenant} {}; {identifier} action={}",
            outstanding_id(&state_key).unwrap_or_default(),
            refusal.map_or("accepted and consumed", |r| if expired {
                "expired"
            } else {
                r
            }),
            redirect.action
        ));
        if refusal.is_some() {
            event.error_code = Some(ErrorCode::CallbackRejected.as_str().into());
        }
        let mut batch = Batch::new();
        batch.consume_callback_state(&state_key, &read);
        let receipt = self.commit_locked(event.clone(), batch, false).await?;
        if let Some(why) = refusal {
            // Already audited above: no second record.
            return Err(Failure {
                err: rejected(why),
                audit_id: Some(receipt.audit_id),
                anonymous: false,
                unproven: false,
            });
        }
        // The installation id is a claim until the provider proves the person who came back
        // administers it; then its account must be the one the operator pinned.
        let pinned = read
            .pin
            .as_ref()
            .map(|p| credbroker_providers::InstalledAccount {
                login: p.login.clone(),
                id: p.id,
            });
        // A pin that is the identifier itself (Entra) bound to another tenant meanwhile:
        // refused before the provider mints anything for it.
        if let Some(pin_id) = pinned.as_ref().and_then(|p| cb.pin_identifier(p)) {
            if pin_id == identifier {
                let owner = self
                    .core
                    .records
                    .identifier_owner(&identifier)
                    .await
                    .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?;
                if owner.is_some_and(|o| o.tenant != tenant.as_str()) {
                    return Err(
                        rejected("this installation is already bound to another tenant").into(),
                    );
                }
            }
        }
        let issued_at = link_issued_at(&read, self.core.callback_state_ttl_s());
        let signer = self.core.assertion_signer();
        // One deadline for the proof's reads (pages of the installer's installations: each
        // call has its own), so a slow upstream cannot hold a public-listener request for
        // minutes. What may not be cut midway (a code exchange) can run past it by a call's
        // time; this bounds the whole at that. A revoke owed whatever happens runs in a task
        // of its own, so this cut never skips it.
        let proof_time = self.core.mint_timeout().saturating_mul(2);
        let context = credbroker_providers::InstallContext {
            proof_time,
            assertions: &signer,
            pin: pinned.as_ref(),
            issued_at: time::OffsetDateTime::from_unix_timestamp(issued_at)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        };
        let bound = proof_time.saturating_add(self.core.mint_timeout());
        let proven = tokio::time::timeout(
            bound,
            cb.prove_installer(&redirect, &context, self.core.mint_timeout()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(credbroker_providers::ProviderError::Unavailable {
                message: format!("the proof did not finish within {} ms", bound.as_millis()),
                upstream_request_id: None,
            })
        });
        // An assertion the broker's issuer signed for the proof goes into the record too.
        let assertion = signer
            .detail()
            .map(|a| format!("; {a}"))
            .unwrap_or_default();
        // The browser is told why, not which assertion the broker signed (its jti, subject
        // and key id): those go into the audit record only.
        let account = match proven {
            Ok(account) => account,
            Err(e) => {
                let why = format!(
                    "{identifier} could not be proven to belong to the person who installed: {e}"
                );
                event.outcome = "denied".into();
                event.error_code = Some(ErrorCode::CallbackRejected.as_str().into());
                event.detail = Some(format!("{why}{assertion}").chars().take(1000).collect());
                return match self.core.audit.append(event.clone()).await {
                    Ok(receipt) => Err(Failure {
                        err: rejected(why),
                        audit_id: Some(receipt.audit_id),
                        anonymous: false,
                        unproven: false,
                    }),
                    // Fails closed like any audited step (the caller's own attempt to record
                    // the failure meets the same log).
                    Err(_) => Err(ApiError::new(
                        ErrorCode::AuditUnavailable,
                        "audit log unavailable",
                    )
                    .into()),
                };
            }
        };
        if !assertion.is_empty() {
            event.detail = Some(format!(
                "{}{assertion}",
                event.detail.take().unwrap_or_default()
            ));
        }
        let pinned = read
            .pin
            .as_ref()
            .is_some_and(|p| p.id == account.id && p.login.eq_ignore_ascii_case(&account.login));
        if !pinned {
            let expected = read
                .pin
                .as_ref()
                .map_or("(no account pinned)".to_owned(), |p| {
                    format!("{} ({})", p.login, p.id)
                });
            let reason = format!(
                "{identifier} belongs to {} ({}), not the account pinned at onboarding: {expected}",
                account.login, account.id
            );
            let mut batch = Batch::new();
            // One an operator ignores stays as it is (not un-ignored by a new proof); one
            // kept already is refreshed as read.
            let held = self
                .core
                .records
                .unclaimed()
                .await
                .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?;
            let known = held.iter().find(|(_, u)| u.value.identifier == identifier);
            let ignored = known.is_some_and(|(_, u)| u.value.ignored);
            let kept = !ignored && super::unclaimed_room(&held, provider.id(), &identifier);
            if kept {
                batch.put_unclaimed(
                    known.map(|(k, u)| (k.as_str(), u)),
                    &Unclaimed {
                        provider: provider.id().to_owned(),
                        identifier: identifier.clone(),
                        config: redirect.config.clone(),
                        account: AccountPin {
                            login: account.login.clone(),
                            id: account.id,
                        },
                        reason: reason.clone(),
                        seen_at: now_rfc3339(),
                        expires_at: Some(super::unclaimed_expiry()),
                        ignored: false,
                    },
                );
            }
            let mut denied = event.clone();
            denied.outcome = "denied".into();
            denied.error_code = Some(ErrorCode::CallbackRejected.as_str().into());
            denied.detail = Some(if kept {
                format!("{reason}; kept as unclaimed for an operator")
            } else if ignored {
                format!("{reason}; an operator ignores it (credbroker unclaimed list)")
            } else {
                format!("{reason}; not kept: the unclaimed list is full")
            });
            // The refusal is the answer even when keeping the installation failed (its
            // unclaimed record changed meanwhile: the denial and the failure are both on
            // the record).
            let audit_id = match self.commit_locked(denied, batch, true).await {
                Ok(receipt) => Some(receipt.audit_id),
                Err(failed) => failed.audit_id,
            };
            return Err(Failure {
                err: rejected(
                    "this installation belongs to another account than the one expected for your organisation; nothing was bound (an operator has been told)",
                ),
                audit_id,
                anonymous: false,
                unproven: false,
            });
        }
        let tenant = (tenant, receipt.audit_id);
        let (tenant, audit_id) = tenant;
        let actor = event.actor.clone();
        // The binding is created and activated on behalf of the link's issuer.
        let issuer = read.creator.clone().map(|c| (c, read.creator_revision));
        // A consent that proves its identifier (Entra's tenant GUID: the admin signed in at
        // the pinned tenant and consented after the link was issued) is recorded for the
        // link's tenant, whether a binding is made now or was made before: an operator may
        // bind it again by hand for this tenant only (to add ARM), never for another.
        if read
            .pin
            .as_ref()
            .and_then(|p| {
                cb.pin_identifier(&credbroker_providers::InstalledAccount {
                    login: p.login.clone(),
                    id: p.id,
                })
            })
            .is_some_and(|pinned| pinned == identifier)
        {
            let mut proven = event.clone();
            proven.outcome = "allowed".into();
            proven.error_code = None;
            proven.detail = Some(format!(
                "consent of {identifier} proven for tenant {tenant} (install link {})",
                outstanding_id(&state_key).unwrap_or_default()
            ));
            // For the tenant the link was issued for, as it is now: one removed (or removed
            // and created again) while the consent was checked gets no proof. The tenant is
            // bumped as read, as a generated tenant parameter bumps it: a removal planned
            // before the proof (on any replica) fails its precondition instead of leaving
            // the proof behind for a tenant made again under its id. A concurrent change of
            // the tenant (a worker or binding added) fails the proof's precondition: it is
            // read and tried again, a few times.
            let issued_at = link_issued_at(&read, self.core.callback_state_ttl_s());
            let mut attempts = 0;
            loop {
                attempts += 1;
                let now_tenant = self
                    .core
                    .records
                    .tenant(&tenant)
                    .await
                    .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?
                    .filter(|t| t.value.created_by(issued_at))
                    .ok_or_else(|| Failure::from(rejected(TENANT_GONE)))?;
                let mut batch = Batch::new();
                batch.replace(&now_tenant, &crate::admin::bumped_tenant(&now_tenant));
                batch.prove_consent(&identifier, tenant.as_str());
                match crate::admin::AdminService::on_behalf_of(
                    issuer.clone(),
                    self.commit_locked(proven.clone(), batch, false),
                )
                .await
                {
                    Ok(_) => break,
                    // Lost before its record (the tenant changed meanwhile): again.
                    Err(f) if f.anonymous && attempts < 3 => continue,
                    // Still losing: refused as the link's own, audited failure.
                    Err(f) if f.anonymous => {
                        return Err(rejected(
                            "the tenant kept changing while the consent was recorded; nothing was bound: ask for a new link",
                        )
                        .into())
                    }
                    Err(f) => return Err(f),
                }
            }
        }
        // Already bound? To this tenant: re-probe; to another: refuse.
        let owner = self
            .core
            .records
            .identifier_owner(&identifier)
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "store read failed"))?;
        let binding_id = match owner {
            Some(o) if o.tenant == tenant.as_str() => o.binding.unwrap_or_default(),
            Some(_) => {
                return Err(rejected("this installation is already bound to another tenant").into())
            }
            None => {
                let id = format!(
                    "{}-{}",
                    provider.id().replace('_', "-"),
                    identifier.rsplit(':').next().unwrap_or("x")
                );
                let id = BindingId::parse(&id)
                    .map_err(|_| rejected("installation id cannot form a binding id"))?;
                let op = AdminOp::AddBinding(NewBinding {
                    id: id.clone(),
                    tenant: tenant.clone(),
                    provider: provider.id().to_owned(),
                    // With the account this install proved: every probe checks it again.
                    config: provider.with_account(&redirect.config, &account),
                    ceiling: Value::Null,
                    owner: governance
                        .as_ref()
                        .map(|g| g.owner.clone())
                        .unwrap_or_default(),
                    purpose: governance.map(|g| g.purpose).unwrap_or_default(),
                    max_secret_age_days: None,
                    tenant_created_by: Some(link_issued_at(
                        &read,
                        self.core.callback_state_ttl_s(),
                    )),
                });
                self.admin
                    .execute_on_behalf(&actor, op, &event.request_id, issuer.clone())
                    .await
                    .map_err(|(e, receipt)| Failure::committing((for_the_browser(e), receipt)))?;
                id.to_string()
            }
        };
        let probe = self
            .admin
            .execute_on_behalf(
                &actor,
                AdminOp::Probe(binding_id.clone()),
                &event.request_id,
                issuer,
            )
            .await;
        let (status, summary) = match probe {
            Ok(o) => (
                "active",
                o.response["probe"]["summary"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            ),
            Err((e, _)) => {
                let e = for_the_browser(e);
                (
                    "pending_activation",
                    format!("probe failed ({}): {}", e.code, e.message),
                )
            }
        };
        Ok((
            json!({ "result": "installation linked", "tenant": tenant.as_str(), "binding": binding_id, "status": status, "probe": summary }),
            Some(audit_id),
        ))
    }
}
