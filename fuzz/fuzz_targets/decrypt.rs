//! Decryption input: any `encryptedContent`, as JSON or as raw parts under a
//! known certificate id and thumbprint (so inputs reach RSA, HMAC and AES).
//! No input may panic; nothing but a genuine encryption may decrypt.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use msgraph_webhooks::crypto::{GeneratedCertificate, KeyRing, generate_certificate};
use msgraph_webhooks::notification::EncryptedContent;

static KEY: LazyLock<(KeyRing, GeneratedCertificate)> = LazyLock::new(|| {
    let generated = generate_certificate("fuzz", 2048, 1).expect("a key");
    let mut ring = KeyRing::new();
    ring.insert("fuzz", generated.key().clone()).expect("an empty ring");
    (ring, generated)
});

fuzz_target!(|data: &[u8]| {
    let (ring, generated) = &*KEY;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let content = if mode % 2 == 0 {
        match serde_json::from_slice::<EncryptedContent>(rest) {
            Ok(content) => content,
            Err(_) => return,
        }
    } else {
        // data_key | data | signature, split at 0xff bytes.
        let mut parts = rest.splitn(3, |b| *b == 0xff);
        let mut content = EncryptedContent::default();
        content.data_key = STANDARD.encode(parts.next().unwrap_or_default());
        content.data = STANDARD.encode(parts.next().unwrap_or_default());
        content.data_signature = STANDARD.encode(parts.next().unwrap_or_default());
        content.encryption_certificate_id = "fuzz".into();
        content.encryption_certificate_thumbprint = generated.thumbprint().to_owned();
        content
    };
    // Without the symmetric key the HMAC cannot match, so nothing decrypts.
    assert!(ring.decrypt_json(&content).is_err());
});
