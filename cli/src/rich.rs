//! The rich-notification flags `listen` and `inspect` share.

use std::fmt;
use std::str::FromStr;

use msgraph_webhooks::crypto::KeyRing;
use msgraph_webhooks::tokens::{Jwks, MICROSOFT_JWKS_URL, TokenValidator};
use msgraph_webhooks::{BoxError, Handler, ReceiverBuilder};
use zeroize::Zeroizing;

/// A secret flag value: never shown by `Debug`.
#[derive(Clone)]
pub(crate) struct Secret(Zeroizing<String>);

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(Zeroizing::new(s.to_owned())))
    }
}

impl Secret {
    /// The value, for the request that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RichArgs {
    /// Decryption key for rich notifications: ID=PATH, ID the subscription's
    /// encryptionCertificateId, PATH a PEM file with the private key and its
    /// certificate, or a PKCS#12 file. Repeat (or separate with commas) to
    /// keep old keys during a certificate rotation.
    #[arg(
        long = "key",
        value_name = "ID=PATH",
        env = "MSGRAPH_WEBHOOKS_KEY",
        value_delimiter = ','
    )]
    keys: Vec<String>,

    /// Password of the key files (PKCS#12, or an encrypted PEM key).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_KEY_PASSWORD", hide_env_values = true)]
    key_password: Option<Secret>,

    /// Your app's client id: validation tokens must be issued to it (aud).
    /// Repeatable.
    #[arg(
        long = "app-id",
        value_name = "ID",
        env = "MSGRAPH_WEBHOOKS_APP_ID",
        value_delimiter = ','
    )]
    pub(crate) app_ids: Vec<String>,

    /// Your tenant: validation tokens must come from these tenants
    /// (default: any), and `listen --subscribe` gets its Graph token from
    /// the first. Repeatable.
    #[arg(
        long = "tenant-id",
        value_name = "ID",
        env = "MSGRAPH_WEBHOOKS_TENANT_ID",
        value_delimiter = ','
    )]
    pub(crate) tenant_ids: Vec<String>,

    /// Signing keys of the validation tokens: a JWKS URL (fetched and
    /// cached) or a JWKS file.
    #[arg(long, value_name = "URL|PATH", default_value = MICROSOFT_JWKS_URL, env = "MSGRAPH_WEBHOOKS_JWKS")]
    jwks: String,
}

impl RichArgs {
    /// The id of the last `--key`: the certificate new and rotated
    /// subscriptions are encrypted to.
    pub(crate) fn newest_key_id(&self) -> Option<&str> {
        let spec = self.keys.last()?;
        Some(spec.split_once('=').map_or(spec.as_str(), |(id, _)| id))
    }

    /// The keys given with `--key`; `None` when there are none.
    pub(crate) fn key_ring(&self) -> Result<Option<KeyRing>, BoxError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let password = self.key_password.as_ref().map(|p| p.0.as_str());
        let mut ring = KeyRing::new();
        for spec in &self.keys {
            let id = spec.split_once('=').map_or(spec.as_str(), |(id, _)| id);
            ring.load_spec(spec, password)
                .map_err(|e| format!("--key {id}=…: {e}"))?;
        }
        Ok(Some(ring))
    }

    /// Sets the receiver up for rich notifications when keys were given.
    pub(crate) fn configure<H: Handler>(
        &self,
        builder: ReceiverBuilder<H>,
    ) -> Result<ReceiverBuilder<H>, BoxError> {
        let Some(keys) = self.key_ring()? else {
            if !self.app_ids.is_empty() {
                tracing::warn!("--app-id without --key: encrypted items will be rejected");
            }
            return Ok(builder);
        };
        tracing::info!(
            certificate_ids = ?keys.ids().collect::<Vec<_>>(),
            app_ids = ?self.app_ids,
            "rich notifications enabled"
        );
        Ok(builder
            .key_ring(keys)
            .app_ids(self.app_ids.clone())
            .tenant_ids(self.tenant_ids.clone())
            .jwks(self.jwks()?))
    }

    pub(crate) fn jwks(&self) -> Result<Jwks, BoxError> {
        Jwks::from_source(&self.jwks).map_err(|e| format!("--jwks: {e}").into())
    }

    pub(crate) fn validator(&self) -> Result<TokenValidator, BoxError> {
        Ok(TokenValidator::new(self.jwks()?, self.app_ids.clone())
            .tenant_ids(self.tenant_ids.clone()))
    }
}
