//! Where Graph delivers: the rule for a subscription's `notificationUrl`
//! and `lifecycleNotificationUrl`, in one place for the pre-flight checks
//! and the emulator.
//!
//! Graph delivers to absolute `https://` URLs with a host; the emulator and
//! local development also take `http://` to a loopback host (`localhost`,
//! `127.0.0.1`, `[::1]`).
//!
//! Graph also delivers through Azure: [`check_destination`] takes the
//! `EventGrid:?azuresubscriptionid=…&resourcegroup=…&partnertopic=…&location=…`
//! form (all four parameters required,
//! <https://learn.microsoft.com/graph/change-notifications-delivery-event-grid>)
//! and `EventHub:https://…` (an `https://` URL after the prefix,
//! <https://learn.microsoft.com/graph/change-notifications-delivery-event-hubs>).
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
    /// An `EventGrid:` URL without this query parameter (or with it empty).
    EventGridParameter(&'static str),
    /// An `EventHub:` URL whose rest is not an `https://` URL with a host.
    EventHubUrl,
}

/// Where a notification URL has Graph deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Destination {
    /// A webhook: POSTs of notification collections.
    Webhook(Url),
    /// An Event Grid partner topic (the URL as given, scheme lowercased).
    EventGrid(Url),
    /// An Event Hub, through the Key Vault secret the URL names.
    EventHub(Url),
}

impl Destination {
    /// The URL, whatever the kind.
    pub fn url(&self) -> &Url {
        match self {
            Destination::Webhook(url)
            | Destination::EventGrid(url)
            | Destination::EventHub(url) => url,
        }
    }
}

/// The query parameters Graph requires of an `EventGrid:` URL.
pub const EVENT_GRID_PARAMETERS: [&str; 4] = [
    "azuresubscriptionid",
    "resourcegroup",
    "partnertopic",
    "location",
];

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::NotAbsolute => f.write_str("is not an absolute URL"),
            EndpointError::Scheme(scheme) => write!(
                f,
                "is {scheme}://, and Graph delivers only to https:// URLs"
            ),
            EndpointError::NoHost => f.write_str("has no host"),
            EndpointError::EventGridParameter(name) => {
                write!(f, "is an EventGrid: URL without its '{name}' parameter")
            }
            EndpointError::EventHubUrl => {
                f.write_str("is an EventHub: URL without an https:// URL after the prefix")
            }
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

/// Checks any notification URL Graph takes: a webhook by
/// [`check_endpoint`]'s rule, an `EventGrid:` URL with its four parameters
/// ([`EVENT_GRID_PARAMETERS`], names matched without regard to case), or
/// an `EventHub:https://…` URL.
///
/// ```
/// use msgraph_webhooks::catalog::{Destination, EndpointError, check_destination};
///
/// let grid = "EventGrid:?azuresubscriptionid=8aa4&resourcegroup=rg&partnertopic=graph&location=westus";
/// assert!(matches!(check_destination(grid, false), Ok(Destination::EventGrid(_))));
/// assert_eq!(
///     check_destination("EventGrid:?azuresubscriptionid=8aa4&resourcegroup=rg&location=westus", false),
///     Err(EndpointError::EventGridParameter("partnertopic"))
/// );
/// ```
///
/// # Errors
///
/// [`EndpointError`]: the first rule broken.
pub fn check_destination(value: &str, allow_http: bool) -> Result<Destination, EndpointError> {
    let trimmed = value.trim();
    let prefix = |p: &str| {
        trimmed
            .get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    };
    if prefix("eventgrid:") {
        let url = Url::parse(trimmed).map_err(|_| EndpointError::NotAbsolute)?;
        for name in EVENT_GRID_PARAMETERS {
            let present = url
                .query_pairs()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && !v.trim().is_empty());
            if !present {
                return Err(EndpointError::EventGridParameter(name));
            }
        }
        return Ok(Destination::EventGrid(url));
    }
    if prefix("eventhub:") {
        let rest = &trimmed["eventhub:".len()..];
        match check_endpoint(rest, false) {
            Ok(inner) if inner.scheme() == "https" => {}
            _ => return Err(EndpointError::EventHubUrl),
        }
        let url = Url::parse(trimmed).map_err(|_| EndpointError::NotAbsolute)?;
        return Ok(Destination::EventHub(url));
    }
    check_endpoint(value, allow_http).map(Destination::Webhook)
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

    #[test]
    fn azure_destinations() {
        let full =
            "EventGrid:?azuresubscriptionid=8aa4&resourcegroup=rg&partnertopic=t&location=westus";
        assert!(matches!(
            check_destination(full, false),
            Ok(Destination::EventGrid(_))
        ));
        for name in EVENT_GRID_PARAMETERS {
            let without: String = full
                .split(['?', '&'])
                .skip(1)
                .filter(|pair| !pair.starts_with(name))
                .collect::<Vec<_>>()
                .join("&");
            assert_eq!(
                check_destination(&format!("EventGrid:?{without}"), false),
                Err(EndpointError::EventGridParameter(name))
            );
            let empty = full.replace(&format!("{name}="), &format!("{name}=&x="));
            assert_eq!(
                check_destination(&empty, false),
                Err(EndpointError::EventGridParameter(name))
            );
        }
        assert!(matches!(
            check_destination(
                "EventHub:https://v.vault.azure.net/secrets/hub?tenantId=c.com",
                false
            ),
            Ok(Destination::EventHub(_))
        ));
        for bad in ["EventHub:", "EventHub:http://v.example/", "EventHub:nope"] {
            assert_eq!(
                check_destination(bad, false),
                Err(EndpointError::EventHubUrl),
                "{bad}"
            );
        }
        assert!(matches!(
            check_destination("https://example.com/", false),
            Ok(Destination::Webhook(_))
        ));
    }
}
