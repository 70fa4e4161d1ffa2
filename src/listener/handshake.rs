//! The validation handshake: Graph proves the endpoint is ours by having it
//! echo `?validationToken=…`, decoded by form rules, within 10 seconds.

use percent_encoding::percent_decode;

/// Longest token (decoded, in bytes) echoed; Graph's are under 100.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

/// What the query string says about the handshake.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// No `validationToken` parameter: an ordinary request.
    Absent,
    /// The decoded token to echo.
    Token(String),
    /// A token that is too long or not UTF-8 once decoded.
    Invalid,
}

/// Finds `validationToken` in a query string (the name matched without
/// regard to case, as SharePoint spells it `validationtoken`) and decodes it
/// with `application/x-www-form-urlencoded` rules: `+` is a space, `%xx` a byte.
pub(crate) fn validation_token(query: Option<&str>) -> Handshake {
    let Some(query) = query else {
        return Handshake::Absent;
    };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !name.eq_ignore_ascii_case("validationToken") {
            continue;
        }
        // Each decoded byte takes at most three encoded ones.
        if value.len() > 3 * MAX_TOKEN_BYTES {
            return Handshake::Invalid;
        }
        let plus_as_space: Vec<u8> = value
            .bytes()
            .map(|b| if b == b'+' { b' ' } else { b })
            .collect();
        let decoded: Vec<u8> = percent_decode(&plus_as_space).collect();
        if decoded.len() > MAX_TOKEN_BYTES {
            return Handshake::Invalid;
        }
        return match String::from_utf8(decoded) {
            Ok(token) => Handshake::Token(token),
            Err(_) => Handshake::Invalid,
        };
    }
    Handshake::Absent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(query: &str) -> Handshake {
        validation_token(Some(query))
    }

    #[test]
    fn graphs_real_token_forms_decode_to_the_sentence() {
        let expected = Handshake::Token(
            "Validation: Testing client application reachability for subscription Request-Id: 1f6e2cf4-5a9b-4a27-b0a4-7a0d2b3a7c11"
                .to_owned(),
        );
        assert_eq!(
            token(
                "validationToken=Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+1f6e2cf4-5a9b-4a27-b0a4-7a0d2b3a7c11"
            ),
            expected
        );
        assert_eq!(
            token(
                "tenant=contoso&validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+1f6e2cf4-5a9b-4a27-b0a4-7a0d2b3a7c11&x=1"
            ),
            expected
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(validation_token(None), Handshake::Absent);
        assert_eq!(token("a=b"), Handshake::Absent);
        assert_eq!(token("validationtoken=abc"), Handshake::Token("abc".into()));
        assert_eq!(token("validationToken="), Handshake::Token(String::new()));
        assert_eq!(token("validationToken"), Handshake::Token(String::new()));
        assert_eq!(
            token("validationToken=%2B%20+"),
            Handshake::Token("+  ".into())
        );
        assert_eq!(
            token("validationToken=%3Cb%3E"),
            Handshake::Token("<b>".into())
        );
        assert_eq!(
            token("validationToken=caf%C3%A9"),
            Handshake::Token("café".into())
        );
        assert_eq!(token("validationToken=%FF%FE"), Handshake::Invalid);
        assert_eq!(token("validationToken=%zz"), Handshake::Token("%zz".into()));
        let exactly = "a".repeat(MAX_TOKEN_BYTES);
        assert_eq!(
            token(&format!("validationToken={exactly}")),
            Handshake::Token(exactly)
        );
        let over = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            token(&format!("validationToken={over}")),
            Handshake::Invalid
        );
        let encoded_over = "%41".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            token(&format!("validationToken={encoded_over}")),
            Handshake::Invalid
        );
    }
}
