//! Token parsing and checks: any string as a validation token, and any
//! header and claims correctly RS256-signed with a trusted key (so inputs
//! reach the claim checks). No input may panic.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use msgraph_webhooks::clock::Clock;
use msgraph_webhooks::time::OffsetDateTime;
use msgraph_webhooks::tokens::{Jwks, TokenValidator};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer;

struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("in range")
    }
}

struct Setup {
    key: PKey<Private>,
    validator: TokenValidator,
    runtime: tokio::runtime::Runtime,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let rsa = Rsa::generate(2048).expect("a key");
    let jwks = serde_json::json!({"keys": [{
        "kty": "RSA", "kid": "k1",
        "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
        "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
    }]});
    let validator = TokenValidator::new(
        Jwks::from_json(jwks.to_string().as_bytes()).expect("a JWKS"),
        ["5a2b0e6c-6f41-4b0a-9d61-1f1c5c1e0a11"],
    )
    .clock(std::sync::Arc::new(Fixed));
    Setup {
        key: PKey::from_rsa(rsa).expect("a key"),
        validator,
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime"),
    }
});

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // header | claims, split at the first 0xff; signed for real.
        let (header, claims) = match rest.iter().position(|b| *b == 0xff) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (&br#"{"alg":"RS256","kid":"k1"}"#[..], rest),
        };
        let body = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut signer = Signer::new(MessageDigest::sha256(), &setup.key).expect("a signer");
        let signature = signer.sign_oneshot_to_vec(body.as_bytes()).expect("a signature");
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    let _ = setup.runtime.block_on(setup.validator.verify(&token));
});
