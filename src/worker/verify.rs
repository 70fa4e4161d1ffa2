//! The verification stage of rich notifications, behind the ack: validation
//! tokens first (cheap, cached), then decryption (RSA, on a pool of its own).
//!
//! Items without `encryptedContent` pass through untouched; lifecycle items
//! are not affected. Encrypted items stay encrypted in the inbox, and nothing
//! here runs before the `202`.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::crypto::{DecryptError, Decryptor, KeyRing};
use crate::handler::{ChangeEvent, HandlerEvent, LifecycleEvent};
use crate::notification::{
    ChangeNotification, EncryptedContent, Envelope, EnvelopeError, ItemError, Notification,
    ValidationTokens,
};
use crate::tokens::{TokenError, TokenValidator, VerifiedToken};

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
        self.verify_many(&[(change, tokens)])
            .await
            .pop()
            .unwrap_or(Err(VerifyError::Decrypt(DecryptError::Internal)))
    }

    /// [`verify`](Self::verify) for several items, in order: tokens item by
    /// item, then the items that passed are decrypted as one job on the
    /// RSA pool.
    pub async fn verify_many(
        &self,
        items: &[(&ChangeNotification, &ValidationTokens)],
    ) -> Vec<Result<Option<Value>, VerifyError>> {
        let mut results = Vec::with_capacity(items.len());
        let mut to_decrypt = Vec::new();
        // Items of one delivery share its tokens: check each set once.
        let mut checked: Vec<(&ValidationTokens, Result<Vec<VerifiedToken>, TokenError>)> =
            Vec::new();
        for (index, (change, tokens)) in items.iter().enumerate() {
            let Some(content) = &change.encrypted_content else {
                results.push(Ok(None));
                continue;
            };
            if let Tokens::Validate(validator) = &self.tokens {
                let verified = match checked.iter().position(|(t, _)| *t == *tokens) {
                    Some(at) => &checked[at].1,
                    None => {
                        checked.push((tokens, validator.verify_all(tokens).await));
                        &checked[checked.len() - 1].1
                    }
                };
                let vouched = match (verified, change.tenant_id.as_deref()) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(verified), Some(tenant)) if verified.iter().any(|t| t.covers(tenant)) => {
                        Ok(())
                    }
                    (Ok(_), _) => Err(TokenError::NotCovered),
                };
                if let Err(e) = vouched {
                    results.push(Err(VerifyError::Token(e)));
                    continue;
                }
            }
            results.push(Ok(None));
            to_decrypt.push((index, content.clone()));
        }
        if to_decrypt.is_empty() {
            return results;
        }
        let (indices, contents): (Vec<usize>, Vec<EncryptedContent>) =
            to_decrypt.into_iter().unzip();
        let decrypted = self.decryptor.decrypt_many(contents).await;
        for (index, result) in indices.into_iter().zip(decrypted) {
            results[index] = result.map(Some).map_err(VerifyError::Decrypt);
        }
        results
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
    ) -> Result<Vec<Result<HandlerEvent, &'static str>>, EnvelopeError> {
        let envelope = Envelope::parse(body)?;
        let now = OffsetDateTime::now_utc();
        let parsed: Vec<Result<Notification, ItemError>> = envelope
            .items
            .iter()
            .map(|raw| Notification::from_json(raw.get()))
            .collect();
        let changes: Vec<(&ChangeNotification, &ValidationTokens)> = parsed
            .iter()
            .filter_map(|n| match n {
                Ok(Notification::Change(change)) => Some((change, &envelope.validation_tokens)),
                _ => None,
            })
            .collect();
        let mut verified = self.verify_many(&changes).await.into_iter();
        let mut out = Vec::with_capacity(parsed.len());
        for (raw, notification) in envelope.items.iter().zip(parsed) {
            let raw = (*raw).to_owned();
            out.push(match notification {
                Err(_) => Err("malformed_item"),
                Ok(Notification::Lifecycle(lifecycle)) => Ok(HandlerEvent::Lifecycle(
                    LifecycleEvent::new(lifecycle, raw, now, 0),
                )),
                Ok(Notification::Change(change)) => match verified.next() {
                    Some(Ok(data)) => Ok(HandlerEvent::Change(ChangeEvent::new(
                        change, raw, data, now, 0,
                    ))),
                    Some(Err(e)) => Err(e.reason()),
                    None => Err("decrypt_internal_error"),
                },
            });
        }
        Ok(out)
    }
}

/// The pipeline's step: the decrypted resource of each change item, if it
/// has one; encrypted items are rejected when there is no verifier.
pub(crate) async fn resource_data_many(
    verifier: Option<&Verifier>,
    items: &[(&ChangeNotification, &ValidationTokens)],
) -> Vec<Result<Option<Value>, VerifyError>> {
    match verifier {
        Some(verifier) => verifier.verify_many(items).await,
        None => items
            .iter()
            .map(|(change, _)| match change.encrypted_content {
                Some(_) => Err(VerifyError::NoKeys),
                None => Ok(None),
            })
            .collect(),
    }
}
