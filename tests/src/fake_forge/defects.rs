//! The defective FITs of the fake Forge: every way a Forge Invocation Token can be wrong,
//! each of which the broker must refuse with `401 invocation_rejected`.

use serde_json::json;

use std::sync::atomic::Ordering;

use super::{b64url, now, uuid, FakeForge, Site, OTHER_APP};

/// Every way a FIT can be wrong. Each must be refused with `401 invocation_rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// `iss` is not `forge/invocation-token` (here: Forge's context-token issuer).
    WrongIssuer,
    /// `aud` is another Forge app's ARI (its own token replayed at us).
    OtherAppAudience,
    /// `aud` is our ARI, but as a one-element array (the claim is a string).
    AudienceArray,
    /// `exp` passed five minutes ago (well beyond any leeway).
    Expired,
    /// `nbf` 30 s ahead (beyond any leeway, within the lifetime a FIT may claim).
    NotYetValid,
    /// `exp` absent.
    MissingExp,
    /// `nbf` absent.
    MissingNbf,
    /// `exp` is a string of digits.
    ExpAsString,
    /// The header names a kid the JWKS does not have (signed by a published key).
    UnknownKid,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256 keyed with the published public key's PEM text.
    Hs256WithPublicKey,
    /// Signed by a key that is not in the JWKS, under the kid of one that is.
    KeyNotInJwks,
    /// A valid token whose payload was swapped for another site's after signing.
    TamperedPayload,
    /// `app.id` is another app (while `aud` is ours).
    AppIdMismatch,
    /// `app.installationId` is the number 42.
    InstallationIdNumber,
    /// `app.installationId` is absent.
    MissingInstallationId,
    /// `app.installationId` is a string but not an installation ARI.
    InstallationIdNotAri,
    /// `app.environment.type` is `DEVELOPMENT`.
    DevelopmentEnvironment,
    /// `app.environment` is a string, not an object.
    EnvironmentNotObject,
    /// `app.apiBaseUrl` names a host other than `api.atlassian.com`.
    ForeignApiBaseHost,
    /// `app.apiBaseUrl` is `http://`.
    ApiBaseUrlHttp,
    /// `app.apiBaseUrl`'s cloudId is not a UUID.
    CloudIdNotUuid,
}

impl Defect {
    /// Every defect.
    pub const ALL: &'static [Defect] = &[
        Defect::WrongIssuer,
        Defect::OtherAppAudience,
        Defect::AudienceArray,
        Defect::Expired,
        Defect::NotYetValid,
        Defect::MissingExp,
        Defect::MissingNbf,
        Defect::ExpAsString,
        Defect::UnknownKid,
        Defect::AlgNone,
        Defect::Hs256WithPublicKey,
        Defect::KeyNotInJwks,
        Defect::TamperedPayload,
        Defect::AppIdMismatch,
        Defect::InstallationIdNumber,
        Defect::MissingInstallationId,
        Defect::InstallationIdNotAri,
        Defect::DevelopmentEnvironment,
        Defect::EnvironmentNotObject,
        Defect::ForeignApiBaseHost,
        Defect::ApiBaseUrlHttp,
        Defect::CloudIdNotUuid,
    ];
}

impl FakeForge {
    /// A FIT from `site` that is wrong in exactly the way `defect` says.
    pub fn defective(&self, site: &Site, defect: Defect) -> String {
        let t = now();
        let fit = self.fit(site);
        let cloud = &site.cloud_id;
        match defect {
            Defect::WrongIssuer => fit.set("/iss", json!("forge/context-token")).token(),
            Defect::OtherAppAudience => fit.set("/aud", json!(OTHER_APP)).token(),
            Defect::AudienceArray => {
                let aud = fit.claims["aud"].clone();
                fit.set("/aud", json!([aud])).token()
            }
            Defect::Expired => fit.times(t - 600, t - 600, t - 300).token(),
            // Beyond any leeway, yet within the lifetime a FIT may claim: only nbf refuses it.
            Defect::NotYetValid => fit.times(t, t + 30, t + 50).token(),
            Defect::MissingExp => fit.remove("/exp").token(),
            Defect::MissingNbf => fit.remove("/nbf").token(),
            Defect::ExpAsString => {
                let exp = fit.claims["exp"].as_i64().unwrap();
                fit.set("/exp", json!(exp.to_string())).token()
            }
            Defect::UnknownKid => {
                let n = self.state.counter.fetch_add(1, Ordering::SeqCst);
                fit.header("kid", json!(format!("forge-key-unknown-{n}")))
                    .token()
            }
            Defect::AlgNone => fit.unsigned().token(),
            Defect::Hs256WithPublicKey => {
                let pem = self.signing_key().public_pem();
                fit.hmac(pem.as_bytes()).token()
            }
            Defect::KeyNotInJwks => fit
                .signed_by_keeping_kid(self.state.stranger.clone())
                .token(),
            Defect::TamperedPayload => {
                let token = fit.token();
                let other = Site::new("ffffffff-eeee-4ddd-8ccc-bbbbbbbbbbbb", &uuid());
                let forged = fit
                    .set("/app/apiBaseUrl", json!(other.api_base_url()))
                    .set("/app/installationId", json!(other.installation_id));
                let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
                parts[1] = b64url(forged.claims.to_string().as_bytes());
                parts.join(".")
            }
            Defect::AppIdMismatch => fit.set("/app/id", json!(OTHER_APP)).token(),
            Defect::InstallationIdNumber => fit.set("/app/installationId", json!(42)).token(),
            Defect::MissingInstallationId => fit.remove("/app/installationId").token(),
            Defect::InstallationIdNotAri => fit
                .set("/app/installationId", json!("installation-of-acme"))
                .token(),
            Defect::DevelopmentEnvironment => fit
                .set("/app/environment/type", json!("DEVELOPMENT"))
                .token(),
            Defect::EnvironmentNotObject => {
                fit.set("/app/environment", json!("PRODUCTION")).token()
            }
            Defect::ForeignApiBaseHost => fit
                .set(
                    "/app/apiBaseUrl",
                    json!(format!(
                        "https://api.atlassian.com.evil.example/ex/jira/{cloud}"
                    )),
                )
                .token(),
            Defect::ApiBaseUrlHttp => fit
                .set(
                    "/app/apiBaseUrl",
                    json!(format!("http://api.atlassian.com/ex/jira/{cloud}")),
                )
                .token(),
            Defect::CloudIdNotUuid => fit
                .set(
                    "/app/apiBaseUrl",
                    json!("https://api.atlassian.com/ex/jira/acme-site"),
                )
                .token(),
        }
    }
}
