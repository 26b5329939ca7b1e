//! What an STS answer may become: the credential handed out for its `Credentials`
//! (AssumeRole and AssumeRoleWithWebIdentity alike), checked before anything is cached, and
//! whether its session is in the account of the binding's role.

use secrecy::SecretString;
use time::OffsetDateTime;

use super::{params, Parsed};
use crate::{IssuedCredential, ProviderError, SecretFields};

/// How a session an STS call returned differs from the binding's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotTheRole<'a> {
    /// No `AssumedRoleUser` ARN, or one that is not an assumed-role session.
    Unparseable,
    /// Another partition (`aws-us-gov`, `aws-cn`, …) than the role's.
    Partition(&'a str),
    /// Another account than the role's.
    Account(&'a str),
    /// Another role of the role's account.
    Role,
}

/// Whether the session an STS call returned (`assumed`, its `AssumedRoleUser` ARN) is one of
/// the binding's role: `Err` says how it differs.
pub(super) fn in_role_account<'a>(
    parsed: &Parsed,
    assumed: Option<&'a str>,
) -> Result<(), NotTheRole<'a>> {
    if assumed.is_some_and(|a| parsed.role.is_assumed_by(a)) {
        return Ok(());
    }
    let Some((partition, account, _)) = assumed.and_then(params::assumed_role) else {
        return Err(NotTheRole::Unparseable);
    };
    Err(if partition != parsed.role.partition() {
        NotTheRole::Partition(partition)
    } else if account != parsed.role.account() {
        NotTheRole::Account(account)
    } else {
        NotTheRole::Role
    })
}

/// What a session that [`in_role_account`] refused is, for the refusal's message.
pub(super) fn not_the_role(parsed: &Parsed, call: &str, found: NotTheRole<'_>) -> String {
    let role = parsed.role.as_str();
    match found {
        NotTheRole::Unparseable => {
            format!("{call} returned no assumed-role session ARN for the binding's role ({role})")
        }
        NotTheRole::Partition(p) => format!(
            "{call} returned a session in partition {} but the binding's role ({role}) is in partition {}",
            crate::quoted(p, 32),
            parsed.role.partition()
        ),
        NotTheRole::Account(a) => format!(
            "{call} returned a session in account {} but the binding's role is in account {}",
            crate::quoted(a, 32),
            parsed.role.account()
        ),
        NotTheRole::Role => format!(
            "{call} returned a session of another role than the binding's ({role}), in its account"
        ),
    }
}

/// What a mint hands out for an answer of AssumeRole or AssumeRoleWithWebIdentity (its
/// `AssumedRoleUser` ARN, `Credentials` and request id): its session must be in the account
/// of the binding's role ([`minted_in_bound_account`]), its credentials as [`credential_of`]
/// checks them.
///
/// # Errors
/// As those two.
pub(super) fn minted(
    parsed: &Parsed,
    assumed: Option<&str>,
    credentials: Option<&aws_sdk_sts::types::Credentials>,
    request_id: Option<&str>,
    duration_s: u32,
) -> Result<IssuedCredential, ProviderError> {
    minted_in_bound_account(parsed, assumed, request_id)?;
    credential_of(credentials, request_id, duration_s)
}

/// The resolve answer for STS's `Credentials` (AssumeRole or AssumeRoleWithWebIdentity) of a
/// session asked for `duration_s` seconds.
///
/// Checked before anything is cached or handed out: the key id is alphanumeric, the secret
/// and the session token printable (a line break in them would be a header injection in the
/// worker), and the expiry lies in the future. An expiry later than the session asked for is
/// taken as now + `duration_s`: a broken or malicious STS cannot make the broker cache (and
/// serve) credentials past their real end. Never panics on any input (fuzzed).
///
/// # Errors
/// [`ProviderError::Unavailable`] naming what is malformed, or an expiry already past.
pub fn credential_of(
    c: Option<&aws_sdk_sts::types::Credentials>,
    request_id: Option<&str>,
    duration_s: u32,
) -> Result<IssuedCredential, ProviderError> {
    let request_id = crate::request_id_of(request_id);
    let malformed = |what: &str| ProviderError::Unavailable {
        message: format!("STS answer is malformed: {what}"),
        upstream_request_id: request_id.clone(),
    };
    let c = c.ok_or_else(|| malformed("no credentials"))?;
    let key_id = c.access_key_id();
    // STS documents the key id as `[\w]*`, 16 to 128 long.
    if !(16..=128).contains(&key_id.len())
        || !key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(malformed(
            "AccessKeyId is not 16..=128 letters, digits and underscores",
        ));
    }
    if !crate::is_printable(c.secret_access_key(), 256)
        || !crate::is_printable(c.session_token(), 65_536)
    {
        return Err(malformed(
            "SecretAccessKey or SessionToken is empty, too long or not printable ASCII",
        ));
    }
    let stated = OffsetDateTime::from_unix_timestamp(c.expiration().secs())
        .map_err(|_| malformed("Expiration is out of range"))?
        + time::Duration::nanoseconds(i64::from(c.expiration().subsec_nanos()));
    let now = OffsetDateTime::now_utc();
    if stated <= now {
        return Err(ProviderError::Unavailable {
            message: "STS returned credentials that are already expired".into(),
            upstream_request_id: request_id.clone(),
        });
    }
    let expires_at =
        crate::no_later_than(stated, now + time::Duration::seconds(i64::from(duration_s)));
    let expiration = expires_at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| malformed("Expiration cannot be formatted"))?;
    let mut credentials = SecretFields::new();
    credentials.insert("AccessKeyId", SecretString::from(key_id));
    credentials.insert("SecretAccessKey", SecretString::from(c.secret_access_key()));
    credentials.insert("SessionToken", SecretString::from(c.session_token()));
    credentials.insert("Expiration", SecretString::from(expiration));
    Ok(IssuedCredential {
        kind: "aws_sts",
        credentials,
        expires_at: Some(expires_at),
        upstream_request_id: request_id,
        details: serde_json::Value::Null,
        subject: None,
    })
}

/// Refuses a minted session whose `AssumedRoleUser` is not the binding's role (another
/// account, another role of its account, another partition), or names none: a broken or malicious STS must not get another account's credentials
/// handed out as this tenant's. (The probe refuses activation for the same reason.)
fn minted_in_bound_account(
    parsed: &Parsed,
    assumed: Option<&str>,
    request_id: Option<&str>,
) -> Result<(), ProviderError> {
    in_role_account(parsed, assumed).map_err(|found| ProviderError::Unavailable {
        message: format!("{}: not handed out", not_the_role(parsed, "STS", found)),
        upstream_request_id: crate::request_id_of(request_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sts::primitives::DateTime;
    use aws_sdk_sts::types::Credentials;

    fn sts(key_id: &str, token: &str, expires_in_s: i64) -> Credentials {
        Credentials::builder()
            .access_key_id(key_id)
            .secret_access_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
            .session_token(token)
            .expiration(DateTime::from_secs(
                OffsetDateTime::now_utc().unix_timestamp() + expires_in_s,
            ))
            .build()
            .unwrap()
    }

    #[test]
    fn key_ids_are_what_sts_documents_and_tokens_are_printable() {
        for key_id in ["ASIAIOSFODNN7EXAMPLE", "ASIA_STS_COMPATIBLE_1"] {
            let c = sts(key_id, "FwoGZXIvYXdzEBY", 900);
            assert!(credential_of(Some(&c), None, 900).is_ok(), "{key_id}");
        }
        for (key_id, token) in [
            ("ASIA-NOT-A-WORD-KEY", "FwoGZXIvYXdzEBY"),
            ("ASIASHORT", "FwoGZXIvYXdzEBY"),
            ("ASIAIOSFODNN7EXAMPLE", "Fwo\r\nX-Injected: 1"),
        ] {
            let c = sts(key_id, token, 900);
            assert!(
                matches!(
                    credential_of(Some(&c), None, 900),
                    Err(ProviderError::Unavailable { .. })
                ),
                "{key_id} {token:?}"
            );
        }
    }

    #[test]
    fn an_expiry_beyond_the_session_is_cut_to_it() {
        let c = sts("ASIAIOSFODNN7EXAMPLE", "FwoGZXIvYXdzEBY", 10 * 365 * 86_400);
        let issued = credential_of(Some(&c), None, 900).unwrap();
        let left = issued.expires_at.unwrap() - OffsetDateTime::now_utc();
        assert!(left <= time::Duration::seconds(900), "{left}");
        assert!(left > time::Duration::seconds(890), "{left}");
    }
}
