//! The verification stage of rich notifications, behind the ack: validation
//! tokens first (cheap, cached), then decryption (RSA, on the blocking pool).
//!
//! Items without `encryptedContent` pass through untouched; lifecycle items
//! are not affected. Encrypted items stay encrypted in the inbox, and nothing
//! here runs before the `202`.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::crypto::{DecryptError, Decryptor, KeyRing};
use crate::handler::{ChangeEvent, Event, LifecycleEvent};
use crate::notification::{
    ChangeNotification, Envelope, EnvelopeError, Notification, ValidationTokens,
};
use crate::tokens::{TokenError, TokenValidator};

/// Why an encrypted item did not yield its resource.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The item is encrypted but the receiver has no key ring.
    NoKeys,
    /// The delivery's validation tokens do not vouch for the item.
    Token(TokenError),
    /// The content did not decrypt.
    Decrypt(DecryptError),
}

impl VerifyError {
    /// The reason as a stable snake_case label (the `items_rejected{reason}`
    /// metric, `inspect`'s stderr), e.g. `token_expired` or `signature_mismatch`.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::NoKeys => "no_decryption_keys",
            VerifyError::Token(e) => e.reason(),
            VerifyError::Decrypt(e) => e.reason(),
        }
    }

    /// Whether trying again later may succeed (the signing keys could not
    /// be fetched). Everything else rejects the item.
    pub fn is_transient(&self) -> bool {
        matches!(self, VerifyError::Token(e) if e.is_transient())
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NoKeys => f.write_str("encrypted item but no decryption keys configured"),
            VerifyError::Token(e) => e.fmt(f),
            VerifyError::Decrypt(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for VerifyError {}

enum Tokens {
    Validate(Arc<TokenValidator>),
    SkipInsecure,
}

/// Verifies and decrypts rich notification items.
///
/// The receiver builds one from [`ReceiverBuilder::key_ring`](crate::ReceiverBuilder::key_ring)
/// and the token settings; `msgraph-webhooks inspect` uses
/// [`inspect`](Self::inspect) on a captured body.
pub struct Verifier {
    decryptor: Decryptor,
    tokens: Tokens,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Verifier");
        s.field("keys", self.decryptor.ring());
        match &self.tokens {
            Tokens::Validate(v) => s.field("tokens", v),
            Tokens::SkipInsecure => s.field("tokens", &"NOT VALIDATED"),
        };
        s.finish()
    }
}

impl Verifier {
    /// Checks tokens with `tokens`, decrypts with `keys`.
    pub fn new(keys: Arc<KeyRing>, tokens: TokenValidator) -> Self {
        Self {
            decryptor: Decryptor::new(keys),
            tokens: Tokens::Validate(Arc::new(tokens)),
        }
    }

    /// Decrypts **without checking validation tokens**: anybody who has the
    /// certificate (it is public) can forge such items. Only for looking at
    /// a captured body whose tokens have expired (`inspect
    /// --insecure-skip-token-validation`); a receiver never uses it.
    pub fn without_token_validation(keys: Arc<KeyRing>) -> Self {
        Self {
            decryptor: Decryptor::new(keys),
            tokens: Tokens::SkipInsecure,
        }
    }

    /// Verifies one change item of a delivery whose tokens are `tokens`.
    /// `Ok(None)` for a basic item (no `encryptedContent`), `Ok(Some(data))`
    /// with the decrypted resource for a rich one.
    ///
    /// # Errors
    ///
    /// [`VerifyError`]: tokens first, then decryption.
    pub async fn verify(
        &self,
        change: &ChangeNotification,
        tokens: &ValidationTokens,
    ) -> Result<Option<Value>, VerifyError> {
        let Some(content) = &change.encrypted_content else {
            return Ok(None);
        };
        if let Tokens::Validate(validator) = &self.tokens {
            validator
                .vouch(tokens, change.tenant_id.as_deref())
                .await
                .map_err(VerifyError::Token)?;
        }
        self.decryptor
            .decrypt(content)
            .await
            .map(Some)
            .map_err(VerifyError::Decrypt)
    }

    /// Verifies a whole captured delivery offline: every item becomes an
    /// event, or the reason it was rejected (`malformed_item` for items that
    /// are not notifications). `clientState` is not checked.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] when the body is not a notification collection.
    pub async fn inspect(
        &self,
        body: &[u8],
    ) -> Result<Vec<Result<Event, &'static str>>, EnvelopeError> {
        let envelope = Envelope::parse(body)?;
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::with_capacity(envelope.items.len());
        for raw in &envelope.items {
            let outcome = match Notification::from_json(raw.get()) {
                Err(_) => Err("malformed_item"),
                Ok(Notification::Lifecycle(lifecycle)) => Ok(Event::Lifecycle(
                    LifecycleEvent::new(lifecycle, (*raw).to_owned(), now, 0),
                )),
                Ok(Notification::Change(change)) => {
                    match self.verify(&change, &envelope.validation_tokens).await {
                        Ok(data) => Ok(Event::Change(ChangeEvent::new(
                            change,
                            (*raw).to_owned(),
                            data,
                            now,
                            0,
                        ))),
                        Err(e) => Err(e.reason()),
                    }
                }
            };
            out.push(outcome);
        }
        Ok(out)
    }
}

/// The pipeline's step: the decrypted resource of `change`, if it has one.
pub(crate) async fn resource_data(
    verifier: Option<&Verifier>,
    change: &ChangeNotification,
    tokens: &ValidationTokens,
) -> Result<Option<Value>, VerifyError> {
    match verifier {
        Some(verifier) => verifier.verify(change, tokens).await,
        None if change.encrypted_content.is_some() => Err(VerifyError::NoKeys),
        None => Ok(None),
    }
}
