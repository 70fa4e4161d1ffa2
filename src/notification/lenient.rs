//! Shapes Graph (or what it relays) may produce that a strict parse would
//! refuse, read leniently behind the ack: an item that got its `202` must
//! reach the handler (its raw JSON keeps what was sent) or the dead letters,
//! never be dropped for a detail of its shape.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A string property that may come as a number (`"id": 42` becomes `"42"`);
/// `null` and other shapes become `None`.
pub(crate) fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A string property where `null` or another shape means absent (`""`).
pub(crate) fn string_or_empty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    Ok(string_or_number(deserializer)?.unwrap_or_default())
}

/// An object property where any other shape (a string, say) means absent.
pub(crate) fn object_or_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match Value::deserialize(deserializer)? {
        object @ Value::Object(_) => T::deserialize(object)
            .map(Some)
            .map_err(serde::de::Error::custom),
        _ => Ok(None),
    }
}

/// `text` with every `\u` escape of an unpaired UTF-16 surrogate replaced by
/// `\ufffd` (U+FFFD, as a lossy UTF-16 decoder does); `None` if it has none.
///
/// JSON allows such escapes (RFC 8259 §8.2) and Graph relays content that
/// holds them (a message cut in the middle of an emoji), but they are no
/// Rust string.
pub(crate) fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let Some(unit) = escape_unit(bytes, i) else {
                    i += 2;
                    continue;
                };
                let paired = (0xD800..0xDC00).contains(&unit)
                    && escape_unit(bytes, i + 6).is_some_and(|u| (0xDC00..0xE000).contains(&u));
                if paired {
                    i += 12;
                } else if (0xD800..0xE000).contains(&unit) {
                    let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    out.push_str(&text[copied..i]);
                    out.push_str("\\ufffd");
                    i += 6;
                    copied = i;
                } else {
                    i += 6;
                }
            }
            _ => i += 1,
        }
    }
    out.map(|mut out| {
        out.push_str(&text[copied..]);
        out
    })
}

/// The code unit of a `\uXXXX` escape starting at `at`, if there is one.
fn escape_unit(bytes: &[u8], at: usize) -> Option<u32> {
    let escape = bytes.get(at..at + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&escape[2..]).ok()?;
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let cases = [
            (r#"{"a":"x\ud83dy"}"#, Some(r#"{"a":"x\ufffdy"}"#)),
            (r#"{"a":"\ude00"}"#, Some(r#"{"a":"\ufffd"}"#)),
            (
                r#"{"a":"\ud83d\ud83d\ude00"}"#,
                Some(r#"{"a":"\ufffd\ud83d\ude00"}"#),
            ),
            (r#"{"a":"\ud83d"}"#, Some(r#"{"a":"\ufffd"}"#)),
            // A pair, an escaped backslash, other escapes: untouched.
            (r#"{"a":"\ud83d\ude00"}"#, None),
            (r#"{"a":"\\ud83d"}"#, None),
            (r#"{"a":"\"\n\u0041"}"#, None),
            ("{\"a\":\"é\"}", None),
        ];
        for (text, expected) in cases {
            let fixed = replace_lone_surrogates(text);
            assert_eq!(fixed.as_deref(), expected, "{text}");
            let parsed = fixed.as_deref().unwrap_or(text);
            assert!(serde_json::from_str::<Value>(parsed).is_ok(), "{parsed}");
        }
    }
}
