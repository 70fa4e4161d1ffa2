//! Secrets as their own types: redacted `Debug`, no `Display`, constant-time
//! equality, zeroized on drop.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The `clientState` a subscription was created with.
///
/// Graph echoes it in every notification of the subscription; a notification
/// whose `clientState` differs did not come from that subscription. The value
/// never appears in logs: `Debug` prints `ClientState(<redacted>)`.
///
/// ```
/// use msgraph_webhooks::ClientState;
///
/// let expected = ClientState::new("s3cret");
/// assert!(expected.matches("s3cret"));
/// assert!(!expected.matches("s3cre"));
/// assert_eq!(format!("{expected:?}"), "ClientState(<redacted>)");
/// ```
#[derive(Clone)]
pub struct ClientState(Zeroizing<String>);

impl ClientState {
    /// Wraps a client state value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// Generates a random client state of 32 URL-safe characters (192 bits),
    /// the kind the subscription manager gives each subscription it creates.
    pub fn random() -> Self {
        let mut bytes = [0u8; 24];
        crate::random::fill(&mut bytes);
        Self::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Compares with a received value in time independent of where they differ.
    ///
    /// Both sides are hashed first, so the comparison also takes the same
    /// time whatever their lengths.
    pub fn matches(&self, received: &str) -> bool {
        let a = openssl::sha::sha256(self.0.as_bytes());
        let b = openssl::sha::sha256(received.as_bytes());
        a.ct_eq(&b).into()
    }

    /// A name for the received value `value` that does not reveal it (the
    /// SHA-256 of it, URL-safe base64): what announces a subscription being
    /// created with a random state in a store every instance reads, so its
    /// first items are recognised before Graph has answered with the id.
    pub(crate) fn fingerprint(value: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(openssl::sha::sha256(value.as_bytes()))
    }

    /// The secret value, for sending it to Graph when creating a subscription.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for ClientState {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose())
    }
}

impl Eq for ClientState {}

impl fmt::Debug for ClientState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientState(<redacted>)")
    }
}

impl Serialize for ClientState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClientState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_states_differ_and_are_url_safe() {
        let a = ClientState::random();
        let b = ClientState::random();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 32);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn matches_is_exact() {
        let s = ClientState::new("secretClientValue");
        assert!(s.matches("secretClientValue"));
        assert!(!s.matches("secretClientValuE"));
        assert!(!s.matches(""));
        assert!(!s.matches("secretClientValue "));
    }
}
