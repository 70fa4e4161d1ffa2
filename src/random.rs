//! Randomness from one place: OpenSSL's CSPRNG, for ids, jitter and keys.
//!
//! Every helper panics only when the OS has no entropy source, and then
//! nothing in this crate (keys, client states, TLS) can work either.
//! Client states have their own constructor, [`ClientState::random`]
//! (a secret type); everything else random asks here.
//!
//! [`ClientState::random`]: crate::ClientState::random

/// Fills `bytes` from the CSPRNG.
///
/// # Panics
///
/// Without an OS entropy source.
pub(crate) fn fill(bytes: &mut [u8]) {
    // Invariant: OpenSSL's CSPRNG fails only without an OS entropy source.
    openssl::rand::rand_bytes(bytes).expect("the OS random source is available");
}

/// A random number in `[0, 1)`, with 53 random bits.
pub(crate) fn unit() -> f64 {
    let mut bytes = [0u8; 8];
    fill(&mut bytes);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `len` random bytes as lowercase hex (`2 * len` characters): an id that
/// needs only to be unique, e.g. an instance's name for leases and dedupe.
pub(crate) fn hex_id(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID, hyphenated: Graph's request ids have this shape.
pub(crate) fn uuid() -> String {
    let mut bytes = [0u8; 16];
    fill(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_in_range() {
        for _ in 0..1000 {
            let r = unit();
            assert!((0.0..1.0).contains(&r));
        }
    }

    #[test]
    fn ids_have_their_shape_and_differ() {
        let id = hex_id(12);
        assert_eq!(id.len(), 24);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(hex_id(12), id);
        let uuid = uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.as_bytes()[14], b'4');
        assert_eq!(uuid.matches('-').count(), 4);
    }
}
