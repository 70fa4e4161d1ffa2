//! Rich notifications, the app's side: the key ring that holds the
//! certificates' private keys, decryption of `encryptedContent`, and
//! generation of a key and self-signed certificate to subscribe with.
//!
//! One crypto stack: OpenSSL.
//!
//! Decryption follows Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data> and fails closed at every step:
//!
//! 1. the key is chosen by `encryptionCertificateId`, and the
//!    `encryptionCertificateThumbprint` must name that key's certificate;
//! 2. the 32-byte symmetric key is unwrapped with RSA-OAEP (SHA-1, MGF1-SHA-1)
//!    only — a key wrapped any other way (PKCS#1 v1.5 included) is refused,
//!    never "decrypted" to garbage;
//! 3. HMAC-SHA256 over the raw ciphertext is compared in constant time
//!    *before* any AES;
//! 4. AES-256-CBC with IV = the key's first 16 bytes, PKCS#7 padding;
//! 5. the plaintext must be JSON.
//!
//! The symmetric key is zeroized after use. RSA is slow (a quarter of a
//! millisecond per item for 2048 bits on a current core), so [`Decryptor`]
//! runs it on a pool of its own, one thread per core, never on a thread
//! that answers Graph.
//!
//! ```
//! use msgraph_webhooks::crypto::{KeyRing, generate_certificate};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let generated = generate_certificate("my-app", 2048, 365)?;
//! let mut ring = KeyRing::new();
//! ring.insert("cert-2026", generated.key().clone())?;
//! // `generated.encryption_certificate()` goes into the subscription's
//! // `encryptionCertificate`, "cert-2026" into `encryptionCertificateId`.
//! # let _ = generated.encryption_certificate();
//! # Ok(()) }
//! ```

mod decrypt;
mod generate;
mod keyring;

pub use decrypt::{DecryptError, Decryptor};
pub use generate::{GenerateError, GeneratedCertificate, generate_certificate};
pub use keyring::{DecryptionKey, KeyError, KeyRing};
