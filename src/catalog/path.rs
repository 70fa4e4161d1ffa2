//! Resource paths as `POST /subscriptions` takes them: `me/…` or
//! `users/{id}/…`, keys as `x/{id}` or `x('{id}')`, any case, and OData
//! query options after `?`.

use std::fmt;

use percent_encoding::percent_decode_str;

/// A `resource` value, split into segments and query options.
///
/// Keys written in parentheses become segments of their own, so
/// `groups('42')/conversations` and `groups/42/conversations` read alike, and
/// a leading `me` becomes `users` followed by the key `me`.
///
/// ```
/// use msgraph_webhooks::catalog::ResourcePath;
///
/// let path = ResourcePath::parse("me/mailFolders('Inbox')/messages?$select=subject").unwrap();
/// assert_eq!(path.segments(), ["users", "me", "mailFolders", "Inbox", "messages"]);
/// assert_eq!(path.query("$SELECT"), Some("subject"));
/// assert_eq!(path.user(), Some("me"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    original: String,
    segments: Vec<Segment>,
    query: Vec<(String, String)>,
}

/// One segment, remembering whether it was written as a key in parentheses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    text: String,
    paren_key: bool,
}

/// Why a `resource` value is not a path at all.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    /// The value is empty.
    Empty,
    /// A segment is empty (`a//b`), a parenthesis or quote is not closed, or
    /// text follows a closing parenthesis within a segment.
    Malformed,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Empty => "the resource is empty",
            PathError::Malformed => "the resource is not a well-formed path",
        })
    }
}

impl std::error::Error for PathError {}

/// Longest `resource` accepted, in bytes: far above any real path, and a
/// bound on the work a hostile value can cause.
const MAX_LEN: usize = 4096;

impl ResourcePath {
    /// Parses a `resource` value (a leading `/` is allowed, as in Graph's docs).
    ///
    /// # Errors
    ///
    /// [`PathError`] when the value is empty, longer than 4 KiB or malformed.
    pub fn parse(resource: &str) -> Result<Self, PathError> {
        let trimmed = resource.trim();
        if trimmed.len() > MAX_LEN {
            return Err(PathError::Malformed);
        }
        let without_slash = trimmed.strip_prefix('/').unwrap_or(trimmed);
        let (path, query) = split_query(without_slash)?;
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        let mut segments = Vec::new();
        for raw in split_outside_quotes(path, '/')? {
            parse_segment(raw, &mut segments)?;
        }
        if segments
            .first()
            .is_some_and(|s| s.text.eq_ignore_ascii_case("me"))
        {
            segments[0].text = "users".to_owned();
            segments.insert(
                1,
                Segment {
                    text: "me".to_owned(),
                    paren_key: false,
                },
            );
        }
        Ok(Self {
            original: trimmed.to_owned(),
            segments,
            query: parse_query(query),
        })
    }

    /// The value as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The path's segments, keys included, `me` expanded to `users`, `me`.
    pub fn segments(&self) -> Vec<&str> {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }

    /// The value of a query option, by name in any case (`$filter`, `model`, …).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every query option, names as written, values percent-decoded.
    pub fn query_options(&self) -> &[(String, String)] {
        &self.query
    }

    /// The user the path is about: the key after a leading `users`
    /// (`me` for `me/…`), if any.
    pub fn user(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [first, user, ..] if first.text.eq_ignore_ascii_case("users") => Some(&user.text),
            _ => None,
        }
    }

    /// Whether any key was written in parentheses (`chats('…')`): Graph then
    /// uses the same syntax for the items in notifications.
    pub fn uses_paren_keys(&self) -> bool {
        self.segments.iter().any(|s| s.paren_key)
    }

    /// The path in one canonical form, for comparing subscriptions: literal
    /// segments and keys lower-cased, keys as segments, `me` replaced by
    /// `me_user` when given, query options dropped.
    pub fn canonical(&self, me_user: Option<&str>) -> String {
        let mut out = String::new();
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            let text = match me_user {
                Some(user) if i == 1 && self.user() == Some("me") => user,
                _ => &segment.text,
            };
            out.push_str(&text.to_lowercase());
        }
        out
    }

    /// Matches a pattern of the catalog: literal segments (any case), `{…}`
    /// for one key segment, `{**}` at the end for one or more segments.
    /// Returns how many literal segments matched (more is more specific).
    pub(crate) fn matches(&self, pattern: &str) -> Option<usize> {
        let mut literals = 0;
        let mut segments = self.segments.iter();
        for part in pattern.split('/') {
            if part == "{**}" {
                return segments.next().map(|_| literals);
            }
            let segment = segments.next()?;
            if part.starts_with('{') {
                if !segment.paren_key
                    && segment
                        .text
                        .get(..6)
                        .is_some_and(|p| p.eq_ignore_ascii_case("getall"))
                {
                    // Graph's collection functions are never keys.
                    return None;
                }
            } else if part.eq_ignore_ascii_case(&segment.text) && !segment.paren_key {
                literals += 1;
            } else {
                return None;
            }
        }
        segments.next().is_none().then_some(literals)
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// Splits at the first `?` outside quotes.
fn split_query(value: &str) -> Result<(&str, &str), PathError> {
    let mut quote = None;
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '?') => return Ok((&value[..i], &value[i + 1..])),
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(PathError::Malformed);
    }
    Ok((value, ""))
}

/// Splits at `separator` outside quotes and parentheses.
fn split_outside_quotes(value: &str, separator: char) -> Result<Vec<&str>, PathError> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.checked_sub(1).ok_or(PathError::Malformed)?,
            (None, c) if c == separator && depth == 0 => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return Err(PathError::Malformed);
    }
    parts.push(&value[start..]);
    Ok(parts)
}

/// `name`, or `name(key)` with the key quoted or not, possibly `id='key'`.
fn parse_segment(raw: &str, out: &mut Vec<Segment>) -> Result<(), PathError> {
    let Some(open) = raw.find('(') else {
        if raw.is_empty() || raw.contains(')') {
            return Err(PathError::Malformed);
        }
        out.push(Segment {
            text: raw.to_owned(),
            paren_key: false,
        });
        return Ok(());
    };
    let name = &raw[..open];
    let rest = &raw[open + 1..];
    let key = rest.strip_suffix(')').ok_or(PathError::Malformed)?;
    if name.is_empty() {
        return Err(PathError::Malformed);
    }
    let key = key.split_once('=').map_or(key, |(_, v)| v).trim();
    let key = strip_quotes(key);
    if key.is_empty() {
        return Err(PathError::Malformed);
    }
    out.push(Segment {
        text: name.to_owned(),
        paren_key: false,
    });
    out.push(Segment {
        text: key.to_owned(),
        paren_key: true,
    });
    Ok(())
}

fn strip_quotes(value: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(value: &str) -> String {
    percent_decode_str(value).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_key_syntaxes_and_me_read_alike() {
        let a = ResourcePath::parse("groups('42')/conversations").unwrap();
        let b = ResourcePath::parse("/Groups/42/Conversations").unwrap();
        assert_eq!(a.canonical(None), b.canonical(None));
        assert!(a.uses_paren_keys());
        assert!(!b.uses_paren_keys());
        let me = ResourcePath::parse("me/messages").unwrap();
        assert_eq!(me.canonical(Some("U1")), "users/u1/messages");
        assert_eq!(me.canonical(None), "users/me/messages");
        let quoted = ResourcePath::parse("teams(id='a/b')/channels").unwrap();
        assert_eq!(quoted.segments(), ["teams", "a/b", "channels"]);
    }

    #[test]
    fn query_options_are_split_and_decoded() {
        let p =
            ResourcePath::parse("communications/presences?$filter=id in ('a','b')&model=B&x=%41")
                .unwrap();
        assert_eq!(p.segments(), ["communications", "presences"]);
        assert_eq!(p.query("$filter"), Some("id in ('a','b')"));
        assert_eq!(p.query("MODEL"), Some("B"));
        assert_eq!(p.query("x"), Some("A"));
        assert_eq!(p.query("y"), None);
        let alert = ResourcePath::parse("security/alerts?$filter=status eq 'New?'").unwrap();
        assert_eq!(alert.query("$filter"), Some("status eq 'New?'"));
    }

    #[test]
    fn patterns_match_literals_keys_and_rests() {
        let p = ResourcePath::parse("teams('1')/channels('19:x')/messages").unwrap();
        assert_eq!(p.matches("teams/{id}/channels/{id}/messages"), Some(3));
        assert_eq!(p.matches("teams/{id}/channels"), None);
        assert_eq!(p.matches("teams/{id}/{**}"), Some(1));
        let all = ResourcePath::parse("teams/getAllMessages").unwrap();
        assert_eq!(all.matches("teams/getAllMessages"), Some(2));
        assert_eq!(all.matches("teams/{id}"), None, "functions are not keys");
        // A key in parentheses never matches a literal: chats('getAllMessages') is a chat.
        let key = ResourcePath::parse("chats('getAllMessages')").unwrap();
        assert_eq!(key.matches("chats/getAllMessages"), None);
        assert_eq!(key.matches("chats/{id}"), Some(1));
    }

    #[test]
    fn malformed_paths_are_errors_not_panics() {
        for bad in [
            "",
            "  ",
            "/",
            "a//b",
            "a/",
            "chats('x",
            "chats(x))",
            "chats)x(",
            "chats('')",
            "()",
            "a/b'c",
        ] {
            assert!(ResourcePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ResourcePath::parse(&"a/".repeat(3000)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            if let Ok(p) = ResourcePath::parse(&s) {
                let _ = p.canonical(Some("u"));
                let _ = p.matches("users/{id}/{**}");
            }
        }
    }
}
