//! The broker's own OIDC issuer: RS256 keys sealed in the store, discovery and JWKS on the
//! public listener, and short-lived assertions (one subject, one audience) for the
//! providers that federate with it (GCP WIF, AWS web identity, an Entra federated
//! credential) — so the platform holds no static cloud secret for them.
//!
//! Key lifecycle (every change through the audited admin pipeline, `admin/issuer_keys.rs`): a key is
//! published from its creation and signs from its `signs_from`; the newest key whose
//! `signs_from` has passed is the current one; an older one stays published until every
//! token it signed has expired (its successor's `signs_from` + the token lifetime + skew),
//! then drops out of the JWKS; `retire` destroys its material. Keys are loaded into memory
//! with their times, so a `next` key becomes current on every replica at the same instant
//! without another change.

mod signer;

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use credbroker_providers::{ProviderError, SecretFields};

use crate::model::{KeyState, PlatformKeyRecord};

pub use signer::{PendingReport, RecordingSigner};

/// The `kind` issuer keys are stored under (beside providers' platform keys).
pub const KEY_KIND: &str = "issuer";

/// At most this many keys are published (previous, current, next and one spare): AWS and
/// Entra read only the first ~100, and a small set keeps inline copies (GCP `jwksJson`)
/// manageable.
pub const MAX_PUBLISHED: usize = 4;

/// Clock skew allowed for on top of a token's lifetime before its key leaves the JWKS, s.
pub const SKEW_S: i64 = 60;

/// How far `iat` and `nbf` are set before the signing instant, seconds.
const BACKDATE_S: i64 = 30;

/// `[issuer]` in credbroker.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The issuer URL (`iss`, byte-identical in discovery): https, a host and optional port,
    /// no path, query or fragment. Discovery and JWKS are served under it.
    pub url: String,
    /// Lifetime of minted assertions, seconds (60..=900).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_s: u64,
    /// How long a rotated key is published before it signs, seconds (at most 90 days).
    #[serde(default = "default_publish_lead")]
    pub publish_lead_s: u64,
}

fn default_token_ttl() -> u64 {
    300
}

fn default_publish_lead() -> u64 {
    86_400
}

impl IssuerSettings {
    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("https://")
            .ok_or("[issuer] url must start with https://")?;
        let host_ok = !rest.is_empty()
            && rest.len() <= 253
            && rest.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(
                "[issuer] url must be https://host[:port] with no path, query, fragment or trailing slash (discovery is served at its /.well-known/)"
                    .into(),
            );
        }
        // Relying parties compare `iss` byte for byte with the URL they registered, which
        // some store with the host lower-cased: one spelling, lower case, everywhere.
        if rest.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "[issuer] url must be lower case (relying parties compare iss byte for byte): https://{}",
                rest.to_ascii_lowercase()
            ));
        }
        if !(60..=900).contains(&self.token_ttl_s) {
            return Err("[issuer] token_ttl_s must be 60..=900".into());
        }
        if self.publish_lead_s > 90 * 86_400 {
            return Err("[issuer] publish_lead_s must be at most 90 days".into());
        }
        Ok(())
    }
}

/// Where a key stands at one instant (derived from the stored times, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Published, signs from its `signs_from`.
    Next,
    /// The signing key.
    Current,
    /// Superseded; published until every token it signed has expired.
    Previous,
    /// Superseded and past that: no longer published; retire it.
    Expired,
    /// Material destroyed.
    Retired,
}

/// One key's times, as the lifecycle needs them.
#[derive(Debug, Clone)]
pub(crate) struct KeyTimes {
    pub version: u32,
    pub signs_from: OffsetDateTime,
    /// When it was retired (material destroyed), if it was.
    pub retired: Option<OffsetDateTime>,
}

/// The window a superseded key stays published: the longest token lifetime the settings
/// allow plus skew — not the current `token_ttl_s`, which a restart may have lowered while
/// tokens minted under the old value still live.
pub(crate) const PUBLISHED_FOR_S: i64 = 900 + SKEW_S;

/// Phase of each key in `keys` at `now`, and, for superseded ones, when they were
/// superseded: the `signs_from` of the next key that signed or will sign — retired ones
/// included when they had signed, so retiring a middle key never brings an expired older
/// one back into the JWKS.
pub(crate) fn phases(
    keys: &[KeyTimes],
    now: OffsetDateTime,
) -> Vec<(u32, Phase, Option<OffsetDateTime>)> {
    let signed_or_will: Vec<OffsetDateTime> = keys
        .iter()
        .filter(|k| k.retired.is_none_or(|at| k.signs_from <= at))
        .map(|k| k.signs_from)
        .collect();
    let mut live: Vec<&KeyTimes> = keys.iter().filter(|k| k.retired.is_none()).collect();
    live.sort_by(|a, b| {
        a.signs_from
            .cmp(&b.signs_from)
            .then(a.version.cmp(&b.version))
    });
    let current = live.iter().rposition(|k| k.signs_from <= now);
    let window = time::Duration::seconds(PUBLISHED_FOR_S);
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.retired.is_some()) {
        out.push((k.version, Phase::Retired, None));
    }
    for (i, k) in live.iter().enumerate() {
        let entry = match current {
            Some(c) if i == c => (k.version, Phase::Current, None),
            Some(c) if i < c => {
                let superseded = signed_or_will
                    .iter()
                    .copied()
                    .filter(|s| *s > k.signs_from)
                    .min()
                    .unwrap_or(live[i + 1].signs_from);
                let phase = if superseded + window > now {
                    Phase::Previous
                } else {
                    Phase::Expired
                };
                (k.version, phase, Some(superseded))
            }
            _ => (k.version, Phase::Next, None),
        };
        out.push(entry);
    }
    out.sort_by_key(|e| e.0);
    out
}

/// The lifecycle times of a stored key.
pub(crate) fn times_of(k: &PlatformKeyRecord) -> KeyTimes {
    let parse =
        |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    KeyTimes {
        version: k.version,
        signs_from: signs_from(k),
        retired: (k.state == KeyState::Retired).then(|| {
            k.retired_at
                .as_deref()
                .and_then(parse)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        }),
    }
}

/// One opened key.
struct LoadedKey {
    version: u32,
    kid: String,
    signs_from: OffsetDateTime,
    jwk: Value,
    encoding: EncodingKey,
}

/// The issuer: its settings, its opened keys and every stored key's times.
pub struct Issuer {
    settings: IssuerSettings,
    keys: RwLock<Arc<Loaded>>,
}

/// What [`Issuer::install`] loaded.
#[derive(Default)]
struct Loaded {
    keys: Vec<LoadedKey>,
    times: Vec<KeyTimes>,
}

/// Claims of a minted assertion, exactly these.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: &'a str,
}

/// What one signed assertion was (never the token): for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionFacts {
    /// The token's `jti`.
    pub jti: String,
    /// Its `sub`.
    pub subject: String,
    /// Its `aud`.
    pub audience: String,
    /// The signing key's `kid`.
    pub kid: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new RSA-2048 key: its material (`private_key_pem`, PKCS#8) and its `kid`.
///
/// # Errors
/// When the CSPRNG or the key generation fails.
pub(crate) fn generate_key() -> Result<(SecretFields, String), String> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| "RSA key generation failed".to_owned())?;
    let der: Pkcs8V1Der<'static> =
        AsDer::<Pkcs8V1Der>::as_der(&pair).map_err(|_| "PKCS#8 encoding failed".to_owned())?;
    let b64 =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der.as_ref()));
    let mut pem = zeroize::Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).map_err(|_| "base64".to_owned())?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let (_, kid) = public_jwk(&pem)?;
    let mut fields = SecretFields::new();
    fields.insert("private_key_pem", secrecy::SecretString::from(pem.as_str()));
    Ok((fields, kid))
}

/// The public JWK of a PKCS#8 PEM RSA key and its RFC 7638 thumbprint (the `kid`).
fn public_jwk(pem: &str) -> Result<(Value, String), String> {
    use aws_lc_rs::signature::KeyPair as _;
    let body = zeroize::Zeroizing::new(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat(),
    );
    let der = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| "issuer key is not PEM".to_owned())?,
    );
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
        .map_err(|_| "issuer key is not an RSA PKCS#8 key".to_owned())?;
    let public = pair.public_key();
    let n = b64url(public.modulus().big_endian_without_leading_zero());
    let e = b64url(public.exponent().big_endian_without_leading_zero());
    // RFC 7638: the required members in lexicographic order, no whitespace.
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    let kid = b64url(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref(),
    );
    let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e});
    Ok((jwk, kid))
}

/// `signs_from` of a stored key (its creation when absent: the first key signs at once).
pub(crate) fn signs_from(k: &PlatformKeyRecord) -> OffsetDateTime {
    let parse =
        |s: &str| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    k.signs_from
        .as_deref()
        .and_then(parse)
        .or_else(|| parse(&k.created_at))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Issuer {
    /// An issuer with no keys loaded yet.
    pub fn new(settings: IssuerSettings) -> Issuer {
        Issuer {
            settings,
            keys: RwLock::new(Arc::new(Loaded::default())),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    /// Replaces the loaded keys with `opened` (record, material) — the non-retired ones —
    /// and the lifecycle times of every stored key (`times`, retired ones included).
    ///
    /// # Errors
    /// When a key's material is not a usable RSA key.
    pub(crate) fn install(
        &self,
        opened: Vec<(PlatformKeyRecord, SecretFields)>,
        times: Vec<KeyTimes>,
    ) -> Result<(), String> {
        let mut keys = Vec::new();
        for (record, material) in opened {
            let pem = material
                .expose("private_key_pem")
                .ok_or_else(|| format!("issuer key {} has no private_key_pem", record.version))?;
            let (jwk, kid) = public_jwk(pem)?;
            let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|_| format!("issuer key {} cannot sign", record.version))?;
            keys.push(LoadedKey {
                version: record.version,
                kid,
                signs_from: signs_from(&record),
                jwk,
                encoding,
            });
        }
        let mut slot = self
            .keys
            .write()
            .map_err(|_| "issuer key lock poisoned".to_owned())?;
        *slot = Arc::new(Loaded { keys, times });
        Ok(())
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }

    /// The published JWKS at `now`: next, current and previous keys (never expired or
    /// retired ones), at most [`MAX_PUBLISHED`].
    pub fn jwks(&self, now: OffsetDateTime) -> Value {
        let loaded = self.loaded();
        let phases = phases(&loaded.times, now);
        let mut published: Vec<&LoadedKey> = loaded
            .keys
            .iter()
            .filter(|k| {
                phases.iter().any(|(v, p, _)| {
                    *v == k.version && matches!(p, Phase::Next | Phase::Current | Phase::Previous)
                })
            })
            .collect();
        // Newest first, so a consumer reading only the first keys sees the ones that sign.
        published.sort_by_key(|k| std::cmp::Reverse(k.signs_from));
        published.truncate(MAX_PUBLISHED);
        json!({ "keys": published.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    /// The discovery document.
    pub fn discovery(&self) -> Value {
        let url = &self.settings.url;
        json!({
            "issuer": url,
            "jwks_uri": format!("{url}/.well-known/jwks.json"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
        })
    }

    /// Signs an assertion for `subject` and `audience` with the current key.
    ///
    /// # Errors
    /// `InvalidConfig` for an empty or oversized subject or audience; `Unavailable` when no
    /// key signs yet.
    pub fn sign(
        &self,
        subject: &str,
        audience: &str,
    ) -> Result<(secrecy::SecretString, AssertionFacts), ProviderError> {
        if subject.is_empty() || subject.len() > 127 || audience.is_empty() || audience.len() > 600
        {
            return Err(ProviderError::InvalidConfig(
                "an assertion needs a subject of 1..=127 bytes and an audience of 1..=600".into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let loaded = self.loaded();
        let phases = phases(&loaded.times, now);
        let current = phases
            .iter()
            .find(|(_, p, _)| *p == Phase::Current)
            .and_then(|(v, _, _)| loaded.keys.iter().find(|k| k.version == *v))
            .ok_or_else(|| ProviderError::Unavailable {
                message:
                    "the broker's OIDC issuer has no signing key (credbroker keys issuer list)"
                        .into(),
                upstream_request_id: None,
            })?;
        let jti = b64url(
            crate::keys::random_bytes(18)
                .map_err(|_| ProviderError::Internal("CSPRNG failure".into()))?
                .as_slice(),
        );
        // Backdated a little: a relying party whose clock is behind ours must not see a
        // token issued in its future.
        let iat = now.unix_timestamp() - BACKDATE_S;
        let ttl = i64::try_from(self.settings.token_ttl_s).unwrap_or(300);
        let claims = Claims {
            iss: &self.settings.url,
            sub: subject,
            aud: audience,
            iat,
            nbf: iat,
            exp: iat + ttl,
            jti: &jti,
        };
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(current.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &current.encoding)
            .map_err(|_| ProviderError::Internal("the issuer could not sign".into()))?;
        Ok((
            secrecy::SecretString::from(token),
            AssertionFacts {
                jti,
                subject: subject.to_owned(),
                audience: audience.to_owned(),
                kid: current.kid.clone(),
            },
        ))
    }
}

/// The list view of one key record at `now`.
pub(crate) fn key_view(
    k: &PlatformKeyRecord,
    phase: Phase,
    superseded_at: Option<OffsetDateTime>,
) -> Value {
    let published_until =
        superseded_at.map(|s| crate::model::rfc3339(s + time::Duration::seconds(PUBLISHED_FOR_S)));
    json!({
        "version": k.version,
        "kid": k.fingerprint,
        "phase": phase,
        "published": matches!(phase, Phase::Next | Phase::Current | Phase::Previous),
        "signs_from": crate::model::rfc3339(signs_from(k)),
        "superseded_at": superseded_at.map(crate::model::rfc3339),
        "published_until": published_until,
        "created_at": k.created_at,
        "retired_at": k.retired_at,
        "compromised": k.compromised,
        "state": if k.state == KeyState::Retired { "retired" } else { "live" },
        // The KEK version wrapping its sealed copy (a KEK rotation's check); a retired key's
        // material is destroyed and needs none.
        "kek_version": (k.state != KeyState::Retired).then_some(k.kek_version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_000_000 + s)
    }

    fn key(version: u32, signs: i64) -> KeyTimes {
        KeyTimes {
            version,
            signs_from: at(signs),
            retired: None,
        }
    }

    #[test]
    fn phases_follow_the_staged_lifecycle() {
        // v1 signs from 0, v2 published at 100 signing from 1000.
        let keys = [key(1, 0), key(2, 1000)];
        let p = |now| phases(&keys, at(now));
        assert_eq!(p(500)[0].1, Phase::Current);
        assert_eq!(p(500)[1].1, Phase::Next);
        assert_eq!(p(1000)[1].1, Phase::Current);
        assert_eq!(p(1000)[0].1, Phase::Previous);
        // Published until superseded + ttl + skew, then expired.
        assert_eq!(p(1000 + PUBLISHED_FOR_S - 1)[0].1, Phase::Previous);
        assert_eq!(p(1000 + PUBLISHED_FOR_S)[0].1, Phase::Expired);
        assert_eq!(p(1000)[0].2, Some(at(1000)));
        let retired = [
            KeyTimes {
                retired: Some(at(5)),
                ..key(1, 0)
            },
            key(2, 1000),
        ];
        assert_eq!(phases(&retired, at(10))[0].1, Phase::Retired);
        assert_eq!(phases(&retired, at(10))[1].1, Phase::Next);
        // Retiring a middle key that had signed does not bring an expired older key back:
        // v1 was superseded when v2 started signing, not when v3 did.
        let late = 5000 + PUBLISHED_FOR_S;
        let middle = [
            key(1, 0),
            KeyTimes {
                retired: Some(at(late)),
                ..key(2, 1000)
            },
            key(3, 5000),
        ];
        assert_eq!(phases(&middle, at(late))[0].1, Phase::Expired);
        assert_eq!(phases(&middle, at(late))[0].2, Some(at(1000)));
        // A next key retired before it ever signed supersedes nothing.
        let abandoned = [
            key(1, 0),
            KeyTimes {
                retired: Some(at(500)),
                ..key(2, 1000)
            },
        ];
        assert_eq!(phases(&abandoned, at(2000))[0].1, Phase::Current);
    }

    fn record(version: u32, signs: OffsetDateTime) -> PlatformKeyRecord {
        PlatformKeyRecord {
            kind: KEY_KIND.into(),
            version,
            state: KeyState::Active,
            fingerprint: String::new(),
            kek_version: 1,
            wrapped_dek: String::new(),
            sealed_payload: String::new(),
            created_at: crate::model::rfc3339(signs),
            activated_at: None,
            retired_at: None,
            sealed_as: crate::model::SealedAs::PlatformKey,
            signs_from: Some(crate::model::rfc3339(signs)),
            compromised: false,
        }
    }

    #[test]
    fn signs_with_the_current_key_and_publishes_next_current_previous() {
        let issuer = Issuer::new(IssuerSettings {
            url: "https://broker.example.com".into(),
            token_ttl_s: 300,
            publish_lead_s: 3600,
        });
        assert!(issuer.sign("cb-x", "aud").is_err(), "no key, no token");
        let now = OffsetDateTime::now_utc();
        let (m1, kid1) = generate_key().unwrap();
        let (m2, kid2) = generate_key().unwrap();
        let (r1, r2) = (
            record(1, now - time::Duration::hours(1)),
            record(2, now + time::Duration::hours(1)),
        );
        let times = vec![times_of(&r1), times_of(&r2)];
        issuer.install(vec![(r1, m1), (r2, m2)], times).unwrap();
        let jwks = issuer.jwks(now);
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], kid2.as_str(), "newest first");
        for k in keys {
            assert_eq!(k["use"], "sig");
            assert_eq!(k["alg"], "RS256");
            assert_eq!(k["kty"], "RSA");
        }
        let (token, facts) = issuer.sign("cb-abc", "https://aud.example").unwrap();
        assert_eq!(facts.kid, kid1);
        use secrecy::ExposeSecret;
        let header = jsonwebtoken::decode_header(token.expose_secret()).unwrap();
        assert_eq!(header.kid.as_deref(), Some(kid1.as_str()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[1].clone()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://aud.example"]);
        v.set_issuer(&["https://broker.example.com"]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(
            token.expose_secret(),
            &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "cb-abc");
        assert_eq!(data.claims["jti"], facts.jti.as_str());
        assert_eq!(
            data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap(),
            300
        );
        assert!(
            data.claims["iat"].as_i64().unwrap() < OffsetDateTime::now_utc().unix_timestamp() - 20,
            "backdated"
        );
        assert!(issuer.sign("", "aud").is_err());
        assert!(issuer.sign(&"x".repeat(128), "aud").is_err());
    }

    #[test]
    fn settings() {
        let ok = IssuerSettings {
            url: "https://broker.example.com".into(),
            token_ttl_s: 300,
            publish_lead_s: 86_400,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            "http://broker.example.com",
            "https://broker.example.com/",
            "https://broker.example.com/issuer",
            "https://broker.example.com?x=1",
            "https://",
            "https://Broker.example.com",
        ] {
            let s = IssuerSettings {
                url: bad.into(),
                ..ok.clone()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
        assert!(IssuerSettings {
            token_ttl_s: 3600,
            ..ok.clone()
        }
        .validate()
        .is_err());
    }
}
