//! Where Graph delivers: the rule for a subscription's `notificationUrl`
//! and `lifecycleNotificationUrl`, in one place for the pre-flight checks
//! and the emulator.
//!
//! Graph delivers to absolute `https://` URLs with a host; the emulator and
//! local development also take `http://` to a loopback host (`localhost`,
//! `127.0.0.1`, `[::1]`).
//!
//! ```
//! use msgraph_webhooks::catalog::{EndpointError, check_endpoint};
//!
//! assert!(check_endpoint("https://example.ngrok-free.app/graph", false).is_ok());
//! assert!(check_endpoint("http://127.0.0.1:8080/", false).is_ok());
//! assert_eq!(
//!     check_endpoint("http://example.com/", false),
//!     Err(EndpointError::Scheme("http".to_owned()))
//! );
//! assert_eq!(check_endpoint("not a url", false), Err(EndpointError::NotAbsolute));
//! ```

use std::fmt;
use std::net::IpAddr;

use url::Url;

/// Why Graph would not deliver to a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// It does not parse as an absolute URL.
    NotAbsolute,
    /// Its scheme (here, lowercase) is not `https` (nor `http` to a
    /// loopback host), e.g. `http` to a public host or `eventhub`.
    Scheme(String),
    /// It has no host.
    NoHost,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::NotAbsolute => f.write_str("is not an absolute URL"),
            EndpointError::Scheme(scheme) => write!(
                f,
                "is {scheme}://, and Graph delivers only to https:// URLs"
            ),
            EndpointError::NoHost => f.write_str("has no host"),
        }
    }
}

impl std::error::Error for EndpointError {}

/// Checks `value` (trimmed) by Graph's rule and returns it parsed: absolute,
/// `https://` (or `http://` to loopback, or to anywhere with `allow_http`),
/// with a host. The scheme is checked before the host, as Graph does.
///
/// # Errors
///
/// [`EndpointError`]: the first rule broken.
pub fn check_endpoint(value: &str, allow_http: bool) -> Result<Url, EndpointError> {
    let url = Url::parse(value.trim()).map_err(|_| EndpointError::NotAbsolute)?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback(&url) => {}
        other => return Err(EndpointError::Scheme(other.to_owned())),
    }
    if url.host().is_none() {
        return Err(EndpointError::NoHost);
    }
    Ok(url)
}

/// Whether `url`'s host is loopback: `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    url.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_rule() {
        for ok in [
            "https://example.com/",
            " https://example.com/hooks?x=1 ",
            "http://localhost:8080/",
            "http://LOCALHOST/",
            "http://127.0.0.1:3000/n",
            "http://[::1]:3000/n",
        ] {
            assert!(check_endpoint(ok, false).is_ok(), "{ok}");
        }
        assert_eq!(
            check_endpoint("http://example.com/", false),
            Err(EndpointError::Scheme("http".into()))
        );
        assert!(check_endpoint("http://example.com/", true).is_ok());
        assert_eq!(
            check_endpoint("EventHub:https://vault.vault.azure.net/secrets/hub", false),
            Err(EndpointError::Scheme("eventhub".into()))
        );
        assert_eq!(
            check_endpoint("/relative", false),
            Err(EndpointError::NotAbsolute)
        );
        assert_eq!(
            check_endpoint("https:", false),
            Err(EndpointError::NotAbsolute)
        );
    }
}
