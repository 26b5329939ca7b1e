//! Request ids: unique per process, telling nothing of how many requests came between two.

/// A fresh request id: `req_` and 32 hex digits — a random 64-bit prefix drawn once per
/// process, then a counter under a keyed permutation. Unique (not secret): a correlation
/// handle for logs and audit. Drawing 16 random bytes per request was ~2 % of the resolve
/// path's CPU; the counter as it is told anyone polling `/healthz` on the public listener
/// how many requests the broker served in between (tenants' job times, operators' work).
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    // `req_` and the prefix's digits, formatted once.
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let prefix = if aws_lc_rs::rand::fill(&mut b).is_err() {
            // Uniqueness across restarts still holds well enough from the clock.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            t as u64
        } else {
            u64::from_be_bytes(b)
        };
        format!("req_{prefix:016x}")
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    crate::hex_text::push_hex(&mut id, &permuted(n).to_be_bytes());
    id
}

/// `n` under a permutation of the 64-bit numbers keyed once per process (a four-round
/// Feistel network over its halves, SipHash with random keys as the round function):
/// distinct counters stay distinct ids, and consecutive ones look unrelated.
fn permuted(n: u64) -> u64 {
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let keys = KEYS.get_or_init(std::collections::hash_map::RandomState::new);
    let (mut left, mut right) = ((n >> 32) as u32, n as u32);
    for round in 0u8..4 {
        let f = keys.hash_one((round, right)) as u32;
        (left, right) = (right, left ^ f);
    }
    (u64::from(left) << 32) | u64::from(right)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_unique_and_well_formed() {
        let a = super::new_request_id();
        let b = super::new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let hex = id.strip_prefix("req_").unwrap();
            assert_eq!(hex.len(), 32);
            assert!(hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        }
        assert_eq!(a[..20], b[..20], "one process prefix");
    }

    /// The ids' last 16 digits tell nothing of how many requests came between two: the
    /// counter is permuted, so consecutive ones are neither consecutive nor ordered, and
    /// distinct counters stay distinct.
    #[test]
    fn request_ids_do_not_count_the_requests_between_them() {
        let tail = |n: u64| super::permuted(n);
        let mut seen = std::collections::HashSet::new();
        let mut ascending = 0;
        for n in 0..100_000u64 {
            assert!(seen.insert(tail(n)), "two counters, one id");
            if n > 0 && tail(n) > tail(n - 1) {
                ascending += 1;
            }
            assert_ne!(tail(n + 1).wrapping_sub(tail(n)), 1);
        }
        // About half the steps go up, as for random numbers (not all of them).
        assert!((45_000..55_000).contains(&ascending), "{ascending}");
        for edge in [u64::MAX, u64::MAX - 1, 1 << 32, (1 << 32) - 1] {
            assert!(seen.insert(tail(edge)) || edge < 100_000);
        }
    }
}
