//! Request bodies in memory: read within their deadline and size, and counted as they
//! arrive in a budget per source (public listener) or per client identity (mTLS listener)
//! (`crate::admission::BodyBudget`), so that senders of large or never finished bodies are
//! bounded together.

use std::sync::Arc;
use std::time::Duration;

use http::{header, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use zeroize::Zeroizing;

use crate::admission::{BodyBudget, BodyPermit, BodyRefusal};
use crate::api_error::{ApiError, ErrorCode};
use crate::broker::Broker;
use crate::config::Limits;
use crate::keys::append_zeroizing;

/// The mTLS listener's body pools. Requests' own bodies (a resolve's, an admin change's: at
/// most `max_body_bytes`) and workers' webhook envelopes (up to about 21.5 MiB each) are
/// apart, so a flood of envelopes never holds up a resolve; active operators' admin bodies
/// have a pool of their own, so no flood of workers' bodies holds up their changes.
#[derive(Clone)]
pub(super) struct MtlsBodies {
    /// Requests' own bodies: one identity holds a sixteenth.
    pub(super) requests: Arc<BodyBudget<Arc<str>>>,
    /// Workers' webhook envelopes: one identity holds a quarter.
    pub(super) envelopes: Arc<BodyBudget<Arc<str>>>,
    /// Active operators' admin bodies: as `requests`.
    pub(super) operators: Arc<BodyBudget<Arc<str>>>,
}

impl MtlsBodies {
    /// The pools for requests of at most `max_body_bytes`.
    pub(super) fn new(max_body_bytes: usize) -> MtlsBodies {
        let small_share = u32::try_from(max_body_bytes.max(SMALL_BODY_SHARE))
            .unwrap_or(u32::MAX / 16)
            .min(u32::MAX / 16);
        MtlsBodies {
            requests: BodyBudget::new(small_share.saturating_mul(16), small_share),
            envelopes: BodyBudget::new(MTLS_BODY_SHARE.saturating_mul(4), MTLS_BODY_SHARE),
            operators: BodyBudget::new(small_share.saturating_mul(16), small_share),
        }
    }
}

/// How much more body memory is reserved at a time as a body arrives, KiB.
pub(super) const RESERVE_STEP_KIB: u32 = 64;

/// How a body budget counts: in units of `unit` bytes, reserving `step` units ahead at a time
/// (0: exactly what arrived).
#[derive(Clone, Copy)]
pub(super) struct Reserving {
    pub(super) unit: usize,
    pub(super) step: u32,
}

/// The public listener's budget: KiB, 64 KiB ahead at a time.
pub(super) const PUBLIC_RESERVING: Reserving = Reserving {
    unit: 1024,
    step: RESERVE_STEP_KIB,
};

/// The mTLS listener's: bytes, exactly what arrived (a stream that sends nothing, or one
/// byte, holds that much and no more).
const MTLS_RESERVING: Reserving = Reserving { unit: 1, step: 0 };

/// Reads a body of at most `max` bytes within the body deadline, growing `permit` as its
/// bytes arrive: a sender holds memory for what it sent, not for what it declared.
pub(super) async fn read_body_reserving<K: Eq + std::hash::Hash + Clone>(
    req: Request<Incoming>,
    limits: &Limits,
    max: usize,
    permit: &mut BodyPermit<K>,
    refused: &BodiesRefused,
    how: Reserving,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    read_frames(req, limits, max, |total| {
        let need = u32::try_from(total.div_ceil(how.unit)).unwrap_or(u32::MAX);
        if need > permit.kib() {
            // A step, never past what the largest body needs.
            let most = u32::try_from(max.div_ceil(how.unit)).unwrap_or(u32::MAX);
            // (need ≤ most: a body past `max` was refused before.)
            let step = (need - permit.kib()).max(how.step).min(most - permit.kib());
            permit
                .grow(step)
                .map_err(|why| bodies_refused(refused, why))?;
        }
        Ok(())
    })
    .await
}

/// Reads a body of at most `max` bytes within the body deadline (its memory reserved by the
/// caller beforehand).
pub(super) async fn read_body_max(
    req: Request<Incoming>,
    limits: &Limits,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    read_frames(req, limits, max, |_| Ok(())).await
}

/// Reads a body's frames into one wiped-on-drop buffer within the body deadline, refusing it
/// past `max` bytes; `admit` is told the total before each frame is kept (and may refuse).
async fn read_frames(
    req: Request<Incoming>,
    limits: &Limits,
    max: usize,
    mut admit: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    check_declared_length(&req, max)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(limits.body_read_timeout_ms);
    let mut body = req.into_body();
    let mut out = Zeroizing::new(Vec::new());
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::bad_request(
                    "request body was not received in time",
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::bad_request("request body could not be read"))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = out.len().saturating_add(data.len());
        if total > max {
            return Err(too_large(max));
        }
        admit(total)?;
        append_zeroizing(&mut out, &data, max);
    }
    Ok(out)
}

/// A body refused by the memory budget: counted, and answered `unavailable`.
pub(super) fn bodies_refused(refused: &BodiesRefused, why: BodyRefusal) -> ApiError {
    let scope = match why {
        BodyRefusal::Source => "source",
        BodyRefusal::Global => "global",
    };
    refused
        .get_or_create(&crate::metrics::ScopeLabel {
            scope: scope.into(),
        })
        .inc();
    ApiError::new(
        ErrorCode::Unavailable,
        "too many request bodies in progress; retry shortly",
    )
}

/// The counter of one listener's refused bodies.
pub(super) type BodiesRefused = prometheus_client::metrics::family::Family<
    crate::metrics::ScopeLabel,
    prometheus_client::metrics::counter::Counter,
>;

/// `payload_too_large` for a body over `max` bytes.
pub(super) fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body exceeds {max} bytes"),
    )
}

/// Refuses a body whose declared length is unreadable or over `max`, before a byte of it is
/// read.
pub(super) fn check_declared_length(req: &Request<Incoming>, max: usize) -> Result<(), ApiError> {
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid content-length"))?;
        if len > max as u64 {
            return Err(too_large(max));
        }
    }
    Ok(())
}

pub(super) fn json_content_type(req: &Request<Incoming>) -> Result<(), ApiError> {
    match req.headers().get(header::CONTENT_TYPE) {
        None => Ok(()),
        Some(v) => {
            let ok = v
                .to_str()
                .map(|s| {
                    s.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("application/json")
                })
                .unwrap_or(false);
            if ok {
                Ok(())
            } else {
                Err(ApiError::bad_request(
                    "content-type must be application/json",
                ))
            }
        }
    }
}

/// One client identity's share of the small bodies' pool (resolve, admin), bytes, unless
/// `max_body_bytes` is larger (the pool is sixteen shares).
const SMALL_BODY_SHARE: usize = 4 * 1024 * 1024;

/// One client identity's share of the workers' webhook envelopes, bytes (the pool is four
/// times as much): room for the largest envelope a configuration may allow (the largest
/// event, base64-encoded, with its headers).
const MTLS_BODY_SHARE: u32 = {
    let most = crate::webhooks::envelope_limit(crate::webhooks::MAX_BODY_LIMIT);
    assert!(most <= u32::MAX as usize / 4);
    most as u32
};

/// Reads a body of at most `max` bytes for `peer`, reserving its memory in the listener's
/// budget as it arrives; the reservation (in `permit`) is kept while the request is served.
pub(super) async fn read_mtls_body(
    req: Request<Incoming>,
    limits: &Limits,
    max: usize,
    broker: &Broker,
    (budget, holder): (&Arc<BodyBudget<Arc<str>>>, &Arc<str>),
    permit: &mut Option<BodyPermit<Arc<str>>>,
) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    json_content_type(&req)?;
    // Nothing is reserved before a byte arrives.
    let first = 0;
    let reserved = permit.insert(
        budget
            .try_reserve(Arc::clone(holder), first)
            .map_err(|why| bodies_refused(&broker.metrics().mtls_bodies_refused, why))?,
    );
    read_body_reserving(
        req,
        limits,
        max,
        reserved,
        &broker.metrics().mtls_bodies_refused,
        MTLS_RESERVING,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::append_zeroizing;
    use zeroize::Zeroizing;

    /// Frame after frame, the bytes arrive whole and in order, and the buffer never grows
    /// past the body's limit (or past what its bytes need).
    #[test]
    fn appended_frames_arrive_whole_within_the_limit() {
        let max = 10_000;
        let mut out = Zeroizing::new(Vec::new());
        let mut expected = Vec::new();
        for i in 0..100u8 {
            let frame = vec![i; 97];
            append_zeroizing(&mut out, &frame, max);
            expected.extend_from_slice(&frame);
            assert!(out.capacity() <= max.max(out.len()), "{}", out.capacity());
        }
        assert_eq!(&out[..], &expected[..]);
        // One frame larger than the doubling: capacity is what it needs.
        let mut out = Zeroizing::new(Vec::new());
        append_zeroizing(&mut out, &[7; 9000], max);
        assert_eq!(out.len(), 9000);
        assert!(out.capacity() <= max);
    }
}
