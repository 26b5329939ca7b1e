//! The body of a secret write (`PUT …/secret`, `POST …/secret/rotate`, `POST
//! /v1/admin/keys/{provider}`): its fields parsed straight into zeroizing memory, never
//! echoed in an answer.

use std::collections::BTreeMap;

use serde::Deserialize;

use credbroker_providers::{SecretFields, SecretFieldsError};

use crate::api_error::{json_error, ApiError};

/// `PUT /v1/admin/bindings/{id}/secret`, `POST …/secret/rotate`, `POST /v1/admin/keys/{provider}`:
/// the secret's fields (write-only; never returned).
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody<'a> {
    /// Field name → value (at most 16 KiB each).
    // Borrowed raw from the (zeroizing) request body and parsed by `SecretFields::from_json`
    // into zeroizing buffers: serde_json would unescape a value holding an escape into a
    // scratch buffer it frees unwiped.
    #[schemars(with = "BTreeMap<String, String>")]
    #[serde(borrow)]
    fields: &'a serde_json::value::RawValue,
    /// When the secret itself stops working (RFC 3339), if the issuer says: the inventory
    /// flags it `expiring_soon` ahead of it.
    #[serde(default)]
    expires_at: Option<String>,
}

pub(super) fn parse_secret(body: &[u8]) -> Result<SecretFields, ApiError> {
    parse_expiring_secret(body).map(|(fields, _)| fields)
}

/// What a secret body must look like (the answer to one of another shape).
const SECRET_BODY_SHAPE: &str = "secret body must be {\"fields\": {\"name\": \"value\", …}}";

/// A secret body, and its declared expiry (RFC 3339, normalized to UTC).
pub(super) fn parse_expiring_secret(
    body: &[u8],
) -> Result<(SecretFields, Option<String>), ApiError> {
    let parsed: SecretBody<'_> = serde_json::from_slice(body).map_err(|e| {
        // A syntax error is answered as one (serde_json's syntax messages name a position,
        // never the input); only a well-formed body of the wrong shape gets the shape.
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request(format!(
                "the secret body is not valid JSON: {}",
                json_error(&e)
            ))
        } else {
            ApiError::bad_request(SECRET_BODY_SHAPE)
        }
    })?;
    let fields = SecretFields::from_json(parsed.fields.get().as_bytes()).map_err(|e| match e {
        SecretFieldsError::BadName(rule) => ApiError::bad_request(rule),
        // The body is valid JSON (serde_json scanned it): `fields` is not an object of
        // strings, or a value holds a lone surrogate escape.
        SecretFieldsError::NotAnObjectOfStrings => ApiError::bad_request(SECRET_BODY_SHAPE),
    })?;
    if fields.is_empty() {
        return Err(ApiError::bad_request("a secret needs at least one field"));
    }
    for name in fields.names() {
        if fields.expose(name).map_or(0, str::len) > 16 * 1024 {
            return Err(ApiError::bad_request(format!(
                "secret field {name:?} is longer than 16 KiB"
            )));
        }
    }
    let expires_at = parsed
        .expires_at
        .as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| crate::model::rfc3339(t.to_offset(time::UtcOffset::UTC)))
                .map_err(|_| ApiError::bad_request("expires_at must be an RFC 3339 time"))
        })
        .transpose()?;
    Ok((fields, expires_at))
}
