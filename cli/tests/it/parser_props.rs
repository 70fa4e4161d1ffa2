//! The parsers of network input never panic, whatever the bytes.

use msgraph_webhooks::notification::{Envelope, ItemHead, Notification};
use proptest::prelude::*;

fn parse_everything(body: &[u8]) {
    if let Ok(envelope) = Envelope::parse(body) {
        for raw in &envelope.items {
            if let Some(head) = ItemHead::parse(raw) {
                let _ = head.class();
            }
            let _ = Notification::from_json(raw.get());
        }
    }
}

/// JSON-shaped text around notification field names, so the fuzzer reaches
/// past the first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("\"value\"".to_owned()),
        Just("\"validationTokens\"".to_owned()),
        Just("\"subscriptionId\"".to_owned()),
        Just("\"clientState\"".to_owned()),
        Just("\"changeType\"".to_owned()),
        Just("\"lifecycleEvent\"".to_owned()),
        Just("\"resourceData\"".to_owned()),
        Just("\"subscriptionExpirationDateTime\"".to_owned()),
        Just("\"2026-03-19T22:11:09.952Z\"".to_owned()),
        Just("\"created\"".to_owned()),
        Just("null".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(":".to_owned()),
        Just(",".to_owned()),
        Just("\"\\u0000\\ud800\"".to_owned()),
        Just("1e999".to_owned()),
        "\"[a-zA-Z0-9+/=:.-]{0,12}\"",
        "-?[0-9]{1,20}",
    ];
    prop::collection::vec(atom, 0..64).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&body);
    }

    #[test]
    fn json_shaped_text_never_panics(body in jsonish()) {
        parse_everything(body.as_bytes());
        let wrapped = format!("{{\"value\":[{{{body}}}],\"validationTokens\":[{body}]}}");
        parse_everything(wrapped.as_bytes());
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    // Skipping over a deep item must not overflow the stack; reading it is refused.
    let body = format!(
        "{{\"value\":[{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    if let Ok(envelope) = Envelope::parse(body.as_bytes()) {
        assert!(ItemHead::parse(envelope.items[0]).is_none());
        assert!(Notification::from_json(envelope.items[0].get()).is_err());
    }
    let item = format!(
        "{{\"subscriptionId\":\"s\",\"changeType\":\"created\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(Notification::from_json(&item).is_err());
}
