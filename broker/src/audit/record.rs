//! The audit record and checkpoint formats.
//!
//! A record line is exactly `serde_json::to_string(&record)`: verification re-serializes each
//! parsed record and requires byte equality, so no edit — not even whitespace — goes unseen.
//! `hash` = SHA-256 over the same serialization with `hash` set to the empty string; it covers
//! `prev_hash`, chaining every record to all before it.

use std::borrow::Cow;

use aws_lc_rs::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

/// Lower-case hex of a SHA-256 digest ([`crate::hex_text`]: one record per resolve).
fn hex_digest(digest: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    crate::hex_text::push_hex(&mut out, digest);
    out
}

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a request handler submits; the writer adds sequence, time and hashes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// `resolve` or `admin`.
    pub kind: String,
    /// What was attempted: `resolve`, `tenant.add`, `secret.rotate`…
    pub action: String,
    /// Request id (also returned to the caller).
    pub request_id: String,
    /// `worker:<name>`, `operator:<name>`, `cli:<account>` (an offline command: the account
    /// of its real uid, then the login session's and sudo's caller in parentheses when
    /// known) or `unidentified`.
    pub actor: String,
    /// Tenant the store derived (never one taken from the request alone).
    pub tenant: Option<String>,
    /// Connector instance.
    pub instance: Option<String>,
    /// Binding.
    pub binding: Option<String>,
    /// Provider.
    pub provider: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// Error code when not allowed.
    pub error_code: Option<String>,
    /// Whether a resolve was served from cache.
    pub cached: Option<bool>,
    /// Keyed HMAC fingerprint of the issued credential — never the credential.
    pub token_fingerprint: Option<String>,
    /// Upstream request id (e.g. the STS request id).
    pub upstream_request_id: Option<String>,
    /// Caller's job id (resolve only).
    pub job_id: Option<String>,
    /// Non-secret detail of an admin change (ids, statuses, field names).
    pub detail: Option<String>,
    /// Handler latency until the decision, microseconds.
    pub latency_us: u64,
}

/// One line of the log: the record's fields and then the event's, in one flat JSON object.
/// (Written and read through [`RecordView`] rather than `#[serde(flatten)]`, which buffers
/// every field and made verification a third slower; the line is the same. No
/// `deny_unknown_fields`: the byte-exact canonical check in verification rejects unknown
/// fields instead.)
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The replica whose chain holds the record, on a store several brokers share (absent
    /// in a single broker's file log, whose lines are unchanged by it). Covered by the hash:
    /// a record cannot be moved to another replica's chain.
    pub replica: Option<u32>,
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Time of the append, RFC 3339 UTC.
    pub time: String,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous record (or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

/// A string of a record line: borrowed from the line, owned only where JSON escaped it
/// (serde's own `Cow<str>` is always owned inside an `Option`).
#[derive(Debug, PartialEq)]
pub(crate) struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// A record line's fields read in place (owned only where JSON escaped them), in the line's
/// order: what verification checks without building an [`AuditRecord`]. Serialized, it is
/// the same line as the record's (same names, order and forms).
#[derive(Serialize, Deserialize)]
pub(crate) struct RecordView<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    pub seq: u64,
    #[serde(borrow)]
    time: Text<'a>,
    #[serde(borrow)]
    kind: Text<'a>,
    #[serde(borrow)]
    action: Text<'a>,
    #[serde(borrow)]
    request_id: Text<'a>,
    #[serde(borrow)]
    actor: Text<'a>,
    #[serde(borrow)]
    tenant: Option<Text<'a>>,
    #[serde(borrow)]
    instance: Option<Text<'a>>,
    #[serde(borrow)]
    binding: Option<Text<'a>>,
    #[serde(borrow)]
    provider: Option<Text<'a>>,
    #[serde(borrow)]
    outcome: Text<'a>,
    #[serde(borrow)]
    error_code: Option<Text<'a>>,
    cached: Option<bool>,
    #[serde(borrow)]
    token_fingerprint: Option<Text<'a>>,
    #[serde(borrow)]
    upstream_request_id: Option<Text<'a>>,
    #[serde(borrow)]
    job_id: Option<Text<'a>>,
    #[serde(borrow)]
    detail: Option<Text<'a>>,
    latency_us: u64,
    #[serde(borrow)]
    pub prev_hash: Text<'a>,
    #[serde(borrow)]
    pub hash: Text<'a>,
}

impl From<RecordView<'_>> for AuditRecord {
    fn from(v: RecordView<'_>) -> Self {
        let owned = |c: Option<Text<'_>>| c.map(Text::into_owned);
        AuditRecord {
            replica: v.replica,
            seq: v.seq,
            time: v.time.into_owned(),
            event: AuditEvent {
                kind: v.kind.into_owned(),
                action: v.action.into_owned(),
                request_id: v.request_id.into_owned(),
                actor: v.actor.into_owned(),
                tenant: owned(v.tenant),
                instance: owned(v.instance),
                binding: owned(v.binding),
                provider: owned(v.provider),
                outcome: v.outcome.into_owned(),
                error_code: owned(v.error_code),
                cached: v.cached,
                token_fingerprint: owned(v.token_fingerprint),
                upstream_request_id: owned(v.upstream_request_id),
                job_id: owned(v.job_id),
                detail: owned(v.detail),
                latency_us: v.latency_us,
            },
            prev_hash: v.prev_hash.into_owned(),
            hash: v.hash.into_owned(),
        }
    }
}

impl AuditRecord {
    /// The record's fields borrowed, in the line's order.
    fn view(&self) -> RecordView<'_> {
        fn text(s: &str) -> Text<'_> {
            Text(Cow::Borrowed(s))
        }
        fn opt(s: &Option<String>) -> Option<Text<'_>> {
            s.as_deref().map(text)
        }
        let e = &self.event;
        RecordView {
            replica: self.replica,
            seq: self.seq,
            time: text(&self.time),
            kind: text(&e.kind),
            action: text(&e.action),
            request_id: text(&e.request_id),
            actor: text(&e.actor),
            tenant: opt(&e.tenant),
            instance: opt(&e.instance),
            binding: opt(&e.binding),
            provider: opt(&e.provider),
            outcome: text(&e.outcome),
            error_code: opt(&e.error_code),
            cached: e.cached,
            token_fingerprint: opt(&e.token_fingerprint),
            upstream_request_id: opt(&e.upstream_request_id),
            job_id: opt(&e.job_id),
            detail: opt(&e.detail),
            latency_us: e.latency_us,
            prev_hash: text(&self.prev_hash),
            hash: text(&self.hash),
        }
    }
}

impl Serialize for AuditRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(s)
    }
}

impl<'de> Deserialize<'de> for AuditRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RecordView::deserialize(d).map(AuditRecord::from)
    }
}

impl AuditRecord {
    /// Computes this record's hash (over its canonical form with `hash` emptied).
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let bytes = serde_json::to_vec(&unhashed).unwrap_or_default();
        hex_digest(digest(&SHA256, &bytes).as_ref())
    }

    /// Whether `hash` is the hash of the record whose canonical line is `line`, computed from
    /// the line itself (the canonical form with `hash` emptied is the line with the digest
    /// cut out), without serializing again or allocating; `false` when the line does not end
    /// in `"hash":"<hash>"}`.
    pub fn line_hash_matches(line: &str, hash: &str) -> bool {
        let Some(head) = line
            .strip_suffix("\"}")
            .and_then(|l| l.strip_suffix(hash))
            .filter(|h| h.ends_with("\"hash\":\""))
        else {
            return false;
        };
        let mut ctx = aws_lc_rs::digest::Context::new(&SHA256);
        ctx.update(head.as_bytes());
        ctx.update(b"\"}");
        let mut hex = [0u8; 64];
        hex::encode_to_slice(ctx.finish().as_ref(), &mut hex).is_ok() && hex == hash.as_bytes()
    }

    /// Sets `hash` and returns the canonical line (without newline), serializing once: the
    /// canonical form with `hash` emptied ends in `"hash":""}`, so the line is that form with
    /// the digest spliced in. Same bytes as [`AuditRecord::compute_hash`] + [`AuditRecord::to_line`].
    pub fn seal(&mut self) -> Vec<u8> {
        const EMPTY_HASH_TAIL: &[u8] = b"\"hash\":\"\"}";
        self.hash = String::new();
        let mut bytes = serde_json::to_vec(&*self).unwrap_or_default();
        self.hash = hex_digest(digest(&SHA256, &bytes).as_ref());
        if bytes.ends_with(EMPTY_HASH_TAIL) {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(self.hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
            bytes
        } else {
            // Not reached while `hash` is the last field; stays correct if that ever changes.
            self.to_line().into_bytes()
        }
    }

    /// The canonical line (without newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The audit id returned to callers: `aud_` and the first 20 hex digits of the record's
    /// own hash. It finds the record (`grep '"hash":"<digits>'`) but, unlike the sequence
    /// number, tells the caller nothing about how many requests the broker has served (the
    /// hash covers `prev_hash`, which the caller cannot know). Set once the record is sealed.
    pub fn audit_id(&self) -> String {
        audit_id_of_hash(&self.hash)
    }
}

/// The audit id of a record with this `hash`.
pub fn audit_id_of_hash(hash: &str) -> String {
    format!("aud_{}", hash.get(..20).unwrap_or(hash))
}

/// A signed checkpoint over (seq, hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Sequence number covered.
    pub seq: u64,
    /// Hash of that record.
    pub hash: String,
    /// When the checkpoint was signed.
    pub time: String,
    /// Ed25519 signature over [`Checkpoint::signed_message`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes signed.
    pub fn signed_message(seq: u64, hash: &str, time: &str) -> Vec<u8> {
        format!("credbroker-audit-checkpoint/v1\n{seq}\n{hash}\n{time}\n").into_bytes()
    }

    /// A checkpoint over (`seq`, `hash`) signed now with `signer`.
    pub fn signed(seq: u64, hash: &str, signer: &crate::keys::AuditSigner) -> Checkpoint {
        use base64::Engine as _;
        let time = crate::model::now_rfc3339();
        let signature = base64::engine::general_purpose::STANDARD
            .encode(signer.sign(&Checkpoint::signed_message(seq, hash, &time)));
        Checkpoint {
            seq,
            hash: hash.to_owned(),
            time,
            signature,
        }
    }

    /// Whether its signature is valid base64 and verifies with `verifier`.
    pub fn verifies(&self, verifier: &crate::keys::AuditVerifier) -> bool {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .is_ok_and(|sig| {
                verifier.verify(
                    &Checkpoint::signed_message(self.seq, &self.hash, &self.time),
                    &sig,
                )
            })
    }
}

/// An allowed resolve record numbered `seq`, chained from genesis and not yet sealed (unit
/// tests).
#[cfg(test)]
pub(crate) fn sample_record(seq: u64) -> AuditRecord {
    AuditRecord {
        replica: None,
        seq,
        time: "2026-01-01T00:00:00Z".into(),
        event: AuditEvent {
            kind: "resolve".into(),
            outcome: "allowed".into(),
            ..Default::default()
        },
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field() {
        let mut r = sample_record(1);
        let h = r.compute_hash();
        r.event.tenant = Some("t".into());
        assert_ne!(h, r.compute_hash());
        r.event.tenant = None;
        r.prev_hash = "1".repeat(64);
        assert_ne!(h, r.compute_hash());
    }

    #[test]
    fn seal_matches_hash_and_line() {
        let mut r = AuditRecord {
            replica: None,
            seq: 9,
            time: "2026-01-01T00:00:00Z".into(),
            event: AuditEvent {
                kind: "resolve".into(),
                detail: Some("\"hash\":\"\"}".into()),
                latency_us: 12,
                ..Default::default()
            },
            prev_hash: GENESIS_HASH.into(),
            hash: "stale".into(),
        };
        let line = r.seal();
        assert_eq!(r.hash, r.compute_hash());
        assert_eq!(line, r.to_line().into_bytes());
        let text = r.to_line();
        assert!(AuditRecord::line_hash_matches(&text, &r.hash));
        assert!(!AuditRecord::line_hash_matches(&text, "00"));
    }

    /// The line is the one `#[serde(flatten)]` wrote in earlier releases, field for field.
    #[test]
    fn the_flat_line_is_the_earlier_releases_line() {
        #[derive(Serialize)]
        struct Earlier<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            replica: Option<u32>,
            seq: u64,
            time: &'a str,
            #[serde(flatten)]
            event: &'a AuditEvent,
            prev_hash: &'a str,
            hash: &'a str,
        }
        for replica in [None, Some(3)] {
            let r = AuditRecord {
                replica,
                seq: 4,
                time: "2026-01-01T00:00:00Z".into(),
                event: AuditEvent {
                    kind: "resolve".into(),
                    tenant: Some("t\u{7}".into()),
                    cached: Some(true),
                    latency_us: 5,
                    ..Default::default()
                },
                prev_hash: GENESIS_HASH.into(),
                hash: "h".into(),
            };
            let earlier = serde_json::to_string(&Earlier {
                replica,
                seq: r.seq,
                time: &r.time,
                event: &r.event,
                prev_hash: &r.prev_hash,
                hash: &r.hash,
            })
            .unwrap();
            assert_eq!(r.to_line(), earlier);
            assert_eq!(serde_json::from_str::<AuditRecord>(&earlier).unwrap(), r);
        }
    }

    #[test]
    fn line_round_trips_canonically() {
        let mut r = AuditRecord {
            replica: None,
            seq: 7,
            time: "2026-01-01T00:00:00.5Z".into(),
            event: AuditEvent {
                kind: "admin".into(),
                action: "tenant.add".into(),
                detail: Some("quote \" and \u{1} control".into()),
                ..Default::default()
            },
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        let line = r.to_line();
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_line(), line);
        // Read in place, the same line again and the same record, with or without a
        // replica and escapes; its hash checks from the line alone.
        for rec in [
            r.clone(),
            AuditRecord {
                replica: Some(3),
                ..r.clone()
            },
        ] {
            let mut rec = rec;
            rec.hash = rec.compute_hash();
            let line = rec.to_line();
            let view: RecordView<'_> = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&view).unwrap(), line);
            assert_eq!(AuditRecord::from(view), rec);
            assert!(AuditRecord::line_hash_matches(&line, &rec.hash));
            let mut other = rec.hash.clone();
            other.replace_range(..1, if other.starts_with('0') { "1" } else { "0" });
            assert!(!AuditRecord::line_hash_matches(&line, &other));
            assert!(!AuditRecord::line_hash_matches(
                &line.replacen("admin", "admiN", 1),
                &rec.hash
            ));
        }
    }
}
