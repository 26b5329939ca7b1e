//! Credential providers for credbroker.
//!
//! The broker core never knows which upstream it talks to: every way of producing a credential
//! (minting from a trust relationship, or opening a pasted secret) sits behind the one
//! [`Provider`] trait, and the only place that maps a provider name to code is the
//! [`ProviderRegistry`]. This mirrors rustls' `CryptoProvider`: one small documented seam,
//! many backends.
//!
//! Guarantees every provider gives the core:
//! - it never logs, formats or returns secret material except inside [`IssuedCredential`],
//!   whose fields are zeroizing and do not implement `Debug`/`Display`;
//! - every upstream call is bounded by the deadline in [`MintRequest`];
//! - a narrowing request outside the binding's ceiling is refused with
//!   [`ProviderError::NarrowingExceedsCeiling`] before any upstream is called.
#![forbid(unsafe_code)]
// Bad input gets a typed error, never a panic: outside unit tests, unwrap/expect/panic are
// compile errors under `cargo clippy` (CI runs it with -D warnings).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod answer_checks;
pub mod atlassian_dc;
pub mod atlassian_forge;
pub mod aws;
pub mod entra;
mod error;
mod federation;
pub mod gcp_wif;
pub mod github;
pub mod http;
mod inbound;
pub mod pasted_secret;
mod provider;
pub mod registry;
mod secret;
mod secret_json;
pub mod servicenow;

pub use answer_checks::{
    echoes, is_bidi_control, is_jwt_text, is_printable, is_unshowable, json_node_bound,
    json_nodes_within, no_later_than, oauth_error_code, quoted, quoted_unless_echo,
};
pub use error::{is_request_id, request_id_of, ProviderError, RefusalReason};
pub use federation::{
    random_alphanumeric, random_subject, AssertionSigner, BindingParameter, NoIssuer, OIDC_SUBJECT,
};
pub use inbound::{
    CallbackEvent, Callbacks, CapturedToken, InstallContext, InstalledAccount, Invocation,
    Invocations, SetupRedirect,
};
pub use pasted_secret::PastedSecret;
pub use provider::{
    BindingContext, Bound, CachePolicy, CeilingEnforcement, CredentialScope, IssuedCredential,
    MintRequest, Narrowing, PlatformKey, PlatformKeys, Probe, ProbeReport, Provider, Revocation,
    SecretRequirement, SelfRotation, TenantParameter,
};
pub use registry::{
    descriptor, resolve_path, Availability, BuildFuture, CatalogEntry, CeilingMode, CliSpec,
    ConfigFlag, CredentialSource, FlagTarget, FlagValue, KeysCli, OnboardPin, ProviderDescriptor,
    ProviderRegistry, TemplateLint, CATALOG, DEMO_PROVIDER,
};
pub use secret::{validate_field_name, SecretFields, SecretFieldsError};

/// `<prefix>:` and the broker's keyed fingerprint of `secret` (trimmed), domain-separated by
/// `label`: how [`PlatformKeys::check`] lists secret material. The text hashed is wiped after.
pub fn keyed_secret_fingerprint(
    prefix: &str,
    label: &str,
    secret: &str,
    keyed: &dyn Fn(&[u8]) -> String,
) -> String {
    let text = zeroize::Zeroizing::new(format!("{label}\0{}", secret.trim()));
    format!("{prefix}:{}", keyed(text.as_bytes()))
}

/// `sha256:` and the first 16 bytes, in hex, of the SHA-256 of `text` (trimmed): how releases
/// before keyed fingerprints listed a client secret (see
/// [`PlatformKeys::earlier_fingerprint`]).
pub fn plain_sha256_prefix(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.trim().as_bytes());
    format!("sha256:{}", hex::encode(&d.as_ref()[..16]))
}

#[cfg(test)]
mod plain_fingerprint_tests {
    /// The form releases before keyed fingerprints listed client secrets under (checked
    /// against SHA-256's "abc" test vector), so a secret stored then is still found.
    #[test]
    fn the_earlier_form_is_sha256_of_the_trimmed_text() {
        assert_eq!(
            super::plain_sha256_prefix(" abc\n"),
            "sha256:ba7816bf8f01cfea414140de5dae2223"
        );
    }
}
