//! The proof that the person who came back administers the customer's tenant: Entra's
//! authorization-code flow, in which the consent is given.
//!
//! The consent link opens `{authority}/{GUID}/oauth2/v2.0/authorize` for the tenant the
//! operator named, with `response_type=code`, `scope=openid {graph}/.default` and
//! `prompt=consent`: an administrator signs in there and grants our app its permissions for
//! the organisation (what the admin-consent endpoint does, which sends back nothing that
//! proves who consented: its `admin_consent=True&tenant=…` can be typed by anyone holding
//! the link). Entra sends the browser back with a one-time `code`, which only the broker can
//! redeem, with its app credential, at that tenant's token endpoint. The `id_token` of the
//! answer names the person who signed in: it must be for our app, from the pinned tenant,
//! carry the `nonce` of this link's authorization request, and list a directory role that
//! can grant the app's permissions (`wids`).
//!
//! The `id_token` comes straight from the token endpoint over TLS, in answer to the broker's
//! own authenticated request, so its signature is not checked (OpenID Connect Core 1.0,
//! 3.1.3.7, step 6: TLS server validation stands in for it). The access token that comes
//! beside it (delegated, for the admin) is not read, copied, kept or logged: the answer is
//! parsed for the `id_token` alone, and its buffer wiped when the broker holds it alone
//! (best effort: the HTTP client may have copied the bytes on their way).

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

use super::sign_in_claims::{check_sign_in, read_sign_in_answer};
use super::token::{post_token_form, TokenFailure};
use super::{aadsts, denied, EntraApp, BAD_CREDENTIAL};
use crate::ProviderError;

/// AADSTS codes of a code Entra will not redeem: expired (70008), already redeemed (54005),
/// malformed or not for this client or redirect URI (70000, 9002313). Whatever Entra
/// redeems, the id_token's `tid` and `iss` must still name the pinned tenant.
const BAD_CODE: &[u32] = &[70008, 54005, 70000, 9002313];

/// The `nonce` of the authorization request a link's `state` opens: derived from the state
/// (which only the link's browser holds), so no second value is kept, and an `id_token`
/// obtained through any other authorization request does not carry it.
pub fn nonce_for(state: &str) -> String {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("credbroker entra sign-in nonce\n{state}").as_bytes(),
    );
    hex::encode(&d.as_ref()[..24])
}

impl EntraApp {
    /// The authorization request of the link whose state is `state`, for `tenant`.
    pub(super) fn sign_in_url(&self, state: &str, tenant: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id())
            .append_pair("response_type", "code")
            .append_pair(
                "redirect_uri",
                self.settings.redirect_uri.as_deref().unwrap_or(""),
            )
            .append_pair("response_mode", "query")
            .append_pair(
                "scope",
                &format!("openid {}/.default", self.settings.graph_resource),
            )
            .append_pair("state", state)
            .append_pair("nonce", &nonce_for(state))
            .append_pair("prompt", "consent")
            .finish();
        format!(
            "{}/{tenant}/oauth2/v2.0/authorize?{query}",
            self.settings.authority_host
        )
    }

    /// Redeems the sign-in's `code` at `tenant`'s token endpoint (every app credential in
    /// turn, as for a mint) and checks the `id_token` (see the module docs). Within `budget`.
    ///
    /// # Errors
    /// [`ProviderError::Denied`] when Entra refuses the code or the `id_token` fails a
    /// check; [`ProviderError::Unavailable`] when Entra cannot be reached.
    pub(super) async fn prove_sign_in(
        &self,
        tenant: &str,
        state: &str,
        code: &SecretString,
        budget: Duration,
        signer: &dyn crate::AssertionSigner,
    ) -> Result<(), ProviderError> {
        let redirect_uri = self
            .settings
            .redirect_uri
            .as_deref()
            .ok_or_else(|| ProviderError::InvalidConfig("redirect_uri is not set".into()))?;
        let client_id = self.client_id();
        let deadline = Instant::now() + budget;
        let grant = [
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect_uri),
        ];
        let mut refused: Vec<String> = Vec::new();
        let mut last_request = None;
        for auth in self.app_credentials()? {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = post_token_form(
                &self.http,
                (&self.settings.authority_host, tenant, &client_id),
                &grant,
                (auth.as_ref(), signer),
                self.per_request(left),
            )
            .await;
            match got {
                Ok((request_id, answer)) => {
                    let claims = read_sign_in_answer(&answer);
                    // The admin's delegated access token is in there: wiped when this is the
                    // buffer's only handle (best effort), never kept.
                    if let Ok(mut bytes) = answer.try_into_mut() {
                        bytes.as_mut().zeroize();
                    }
                    // Refused, not retried: the answer came and proves nothing. The message
                    // is fixed (a claim's value could otherwise reach the browser).
                    let claims = claims.map_err(|m| {
                        denied(
                            format!("Entra's answer to the sign-in could not be read ({m})"),
                            request_id.clone(),
                        )
                    })?;
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    return check_sign_in(
                        &claims,
                        tenant,
                        &client_id,
                        &nonce_for(state),
                        &self.settings.issuer_hosts,
                        now,
                    )
                    .map(|_| ())
                    .map_err(|m| denied(m, request_id));
                }
                Err(TokenFailure::Refused {
                    error, request_id, ..
                }) if error.codes.iter().any(|c| BAD_CREDENTIAL.contains(c)) => {
                    let codes = aadsts(&error.codes);
                    tracing::warn!(credential = %auth.label(), codes = %codes, description = %error.description, request_id = ?request_id, "Entra refused an app credential");
                    refused.push(format!("{}: {codes}", auth.name()));
                    last_request = request_id;
                }
                Err(TokenFailure::Refused {
                    error, request_id, ..
                }) => {
                    let why = if error.codes.iter().any(|c| BAD_CODE.contains(c)) {
                        "the sign-in's code was refused (expired, already used, or not issued for this app and redirect URI)"
                    } else {
                        "the sign-in could not be completed"
                    };
                    return Err(denied(
                        format!(
                            "{why}: Entra answered {} ({})",
                            error.error,
                            aadsts(&error.codes)
                        ),
                        request_id,
                    ));
                }
                Err(TokenFailure::Unavailable(e)) => return Err(e),
            }
        }
        Err(ProviderError::Denied {
            message: format!(
                "Entra refused every app credential ({}): the sign-in could not be redeemed",
                refused.join("; ")
            ),
            upstream_request_id: last_request,
            trust_broken: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_is_the_states_alone() {
        let a = nonce_for("abc");
        assert_eq!(a, nonce_for("abc"));
        assert_ne!(a, nonce_for("abd"));
        assert_eq!(a.len(), 48);
        assert!(!a.contains("abc"));
    }
}
