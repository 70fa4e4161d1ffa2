//! Envelope parsing: what the listener reads before the ack, and the typed
//! parse behind it. No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgraph_webhooks::ResourceKind;
use msgraph_webhooks::notification::resources::Resource;
use msgraph_webhooks::notification::{Envelope, ItemHead, Notification};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::parse(data) else {
        return;
    };
    for item in &envelope.items {
        if let Some(head) = ItemHead::parse(item) {
            let _ = head.class();
        }
        if let Ok(Notification::Change(change)) = Notification::from_json(item.get()) {
            let kind = change.resource_kind();
            let _ = ResourceKind::from_resource_path(&change.resource);
            if let Some(data) = change.other.get("data") {
                let _ = Resource::from_json(&kind, data);
            }
        }
    }
});
