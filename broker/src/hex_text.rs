//! Lower-case hex appended to a string through the `hex` crate's table: its `encode` builds a
//! `String` a char at a time, a visible cost where every resolve formats digests and ids (the
//! audit record's hashes, the credential fingerprint, the request id).

/// SHA-256 of `data`, lower-case hex (state nonces, webhook bodies, intake tokens, install
/// states' keys and ids).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Whether `secret`'s SHA-256 is `held_hex` (as [`sha256_hex`] wrote it), compared in
/// constant time: a held digest checked against what a caller presents.
pub fn sha256_matches(held_hex: &str, secret: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(
        held_hex.as_bytes(),
        sha256_hex(secret).as_bytes(),
    )
    .is_ok()
}

/// Appends the lower-case hex of `bytes` to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    let mut buf = [0u8; 64];
    for chunk in bytes.chunks(buf.len() / 2) {
        let digits = &mut buf[..chunk.len() * 2];
        // The buffer is sized to the chunk and hex digits are ASCII: the fallback never runs.
        match hex::encode_to_slice(chunk, &mut *digits)
            .ok()
            .and_then(|()| std::str::from_utf8(digits).ok())
        {
            Some(text) => out.push_str(text),
            None => out.push_str(&hex::encode(chunk)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_crates_encode_at_every_length() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for len in [0, 1, 8, 16, 31, 32, 33, 64, 100, 256] {
            let mut out = String::from("x:");
            super::push_hex(&mut out, &bytes[..len]);
            assert_eq!(
                out,
                format!("x:{}", hex::encode(&bytes[..len])),
                "{len} bytes"
            );
        }
    }
}
