//! The key ring: the private keys of the app's encryption certificates, by
//! `encryptionCertificateId`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Once};

use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, Private};
use openssl::x509::{X509, X509Ref};
use zeroize::Zeroizing;

/// One certificate's private key, with the certificate it belongs to.
///
/// `Debug` shows the thumbprint, never the key.
#[derive(Clone)]
pub struct DecryptionKey {
    key: PKey<Private>,
    certificate: X509,
    thumbprint: String,
}

impl fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("thumbprint", &self.thumbprint)
            .field("bits", &self.key.bits())
            .finish_non_exhaustive()
    }
}

/// Why a key could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file is neither a PEM file with a private key and a certificate
    /// nor a PKCS#12 file that opens with the password given.
    Unreadable(String),
    /// The key is not an RSA key (Graph encrypts to RSA only).
    NotRsa,
    /// The certificate's public key is not the private key's.
    Mismatch,
    /// `--key` was not of the form `ID=PATH`, or the id is empty.
    BadSpec,
    /// The id is already in the ring.
    DuplicateId(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(e) => write!(f, "cannot read the key file: {e}"),
            KeyError::Unreadable(why) => write!(
                f,
                "not a PEM file with a private key and its certificate, nor a PKCS#12 file \
                 that opens with the password given ({why})"
            ),
            KeyError::NotRsa => f.write_str("the key is not an RSA key"),
            KeyError::Mismatch => f.write_str("the certificate does not belong to the private key"),
            KeyError::BadSpec => f.write_str("expected ID=PATH with a non-empty ID"),
            KeyError::DuplicateId(id) => write!(f, "certificate id {id:?} is given twice"),
        }
    }
}

impl std::error::Error for KeyError {}

impl DecryptionKey {
    /// A key and its certificate.
    ///
    /// # Errors
    ///
    /// [`KeyError::NotRsa`] or [`KeyError::Mismatch`].
    pub fn new(key: PKey<Private>, certificate: X509) -> Result<Self, KeyError> {
        if key.id() != Id::RSA {
            return Err(KeyError::NotRsa);
        }
        let public = certificate
            .public_key()
            .map_err(|e| KeyError::Unreadable(e.to_string()))?;
        if !public.public_eq(&key) {
            return Err(KeyError::Mismatch);
        }
        let thumbprint =
            thumbprint(&certificate).map_err(|e| KeyError::Unreadable(e.to_string()))?;
        Ok(Self {
            key,
            certificate,
            thumbprint,
        })
    }

    /// Reads a PEM file holding the private key and its certificate (in
    /// either order; an encrypted PEM key needs `password`), or a PKCS#12
    /// file (`password`, empty when `None`).
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the file cannot be read or holds no matching pair.
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(crate::files::read_capped(path).map_err(KeyError::Io)?);
        Self::from_bytes(&bytes, password)
    }

    /// Like [`from_file`](Self::from_file), from the file's bytes.
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the bytes hold no matching pair.
    pub fn from_bytes(bytes: &[u8], password: Option<&str>) -> Result<Self, KeyError> {
        let is_pem = bytes
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"));
        if is_pem {
            Self::from_pem(bytes, password)
        } else {
            Self::from_pkcs12(bytes, password.unwrap_or(""))
        }
    }

    fn from_pem(pem: &[u8], password: Option<&str>) -> Result<Self, KeyError> {
        let key = match password {
            Some(password) => PKey::private_key_from_pem_passphrase(pem, password.as_bytes()),
            None => PKey::private_key_from_pem(pem),
        }
        .map_err(|e| KeyError::Unreadable(format!("private key: {e}")))?;
        let certificate =
            X509::from_pem(pem).map_err(|e| KeyError::Unreadable(format!("certificate: {e}")))?;
        Self::new(key, certificate)
    }

    fn from_pkcs12(der: &[u8], password: &str) -> Result<Self, KeyError> {
        if password.contains('\0') {
            // OpenSSL takes a C string; rust-openssl would panic on a NUL.
            return Err(KeyError::Unreadable("password contains a NUL byte".into()));
        }
        load_legacy_provider();
        let parsed = Pkcs12::from_der(der)
            .and_then(|p| p.parse2(password))
            .map_err(|e| KeyError::Unreadable(format!("PKCS#12: {e}")))?;
        match (parsed.pkey, parsed.cert) {
            (Some(key), Some(certificate)) => Self::new(key, certificate),
            _ => Err(KeyError::Unreadable(
                "PKCS#12 file without a private key and certificate".into(),
            )),
        }
    }

    /// The certificate.
    pub fn certificate(&self) -> &X509Ref {
        &self.certificate
    }

    /// Upper-case hex SHA-1 of the DER certificate, as Graph sends it in
    /// `encryptionCertificateThumbprint`.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    pub(crate) fn private_key(&self) -> &PKey<Private> {
        &self.key
    }
}

/// PKCS#12 files made by Windows and .NET often use RC2 or 3DES, which
/// OpenSSL 3 keeps in its "legacy" provider. Loaded once, with the default
/// provider kept, and never unloaded: keys may be read at any time.
fn load_legacy_provider() {
    static LOAD: Once = Once::new();
    LOAD.call_once(|| {
        match openssl::provider::Provider::try_load(None, "legacy", true) {
            // Dropping the handle would unload it.
            Ok(provider) => std::mem::forget(provider),
            Err(e) => tracing::debug!(error = %e, "OpenSSL legacy provider not available"),
        }
    });
}

pub(crate) fn thumbprint(certificate: &X509Ref) -> Result<String, openssl::error::ErrorStack> {
    let digest = certificate.digest(MessageDigest::sha1())?;
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect())
}

/// The app's decryption keys, by `encryptionCertificateId`.
///
/// Several keys at once, so a certificate can be rotated while
/// notifications encrypted to the old one still arrive (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
/// `Debug` lists ids and thumbprints only.
///
/// ```no_run
/// use msgraph_webhooks::crypto::KeyRing;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut ring = KeyRing::new();
/// ring.load_spec("cert-2025=old.pem", None)?;
/// ring.load_spec("cert-2026=new.pfx", Some("pfx password"))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, Arc<DecryptionKey>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(id, key)| (id, key.thumbprint())))
            .finish()
    }
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under the certificate id `id`.
    ///
    /// # Errors
    ///
    /// [`KeyError::DuplicateId`] when the id is taken, [`KeyError::BadSpec`]
    /// when it is empty.
    pub fn insert(&mut self, id: impl Into<String>, key: DecryptionKey) -> Result<(), KeyError> {
        let id = id.into();
        if id.is_empty() {
            return Err(KeyError::BadSpec);
        }
        if self.keys.contains_key(&id) {
            return Err(KeyError::DuplicateId(id));
        }
        self.keys.insert(id, Arc::new(key));
        Ok(())
    }

    /// Loads the key file `path` under `id`; see [`DecryptionKey::from_file`].
    ///
    /// # Errors
    ///
    /// [`KeyError`] when the file holds no usable key or the id is taken.
    pub fn load(
        &mut self,
        id: impl Into<String>,
        path: &Path,
        password: Option<&str>,
    ) -> Result<(), KeyError> {
        let key = DecryptionKey::from_file(path, password)?;
        self.insert(id, key)
    }

    /// Loads `ID=PATH`, the form of the CLI's `--key`. The id is everything
    /// before the first `=` (certificate ids may contain `/`, not `=`).
    ///
    /// # Errors
    ///
    /// [`KeyError::BadSpec`] for another form, else as [`load`](Self::load).
    pub fn load_spec(&mut self, spec: &str, password: Option<&str>) -> Result<(), KeyError> {
        let (id, path) = spec.split_once('=').ok_or(KeyError::BadSpec)?;
        if id.is_empty() || path.is_empty() {
            return Err(KeyError::BadSpec);
        }
        self.load(id, Path::new(path), password)
    }

    /// The key for a certificate id.
    pub fn get(&self, id: &str) -> Option<&Arc<DecryptionKey>> {
        self.keys.get(id)
    }

    /// The certificate ids in the ring.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::generate_certificate;

    #[test]
    fn pem_in_either_order_and_mismatched_pairs() {
        let a = generate_certificate("a", 2048, 1).unwrap();
        let b = generate_certificate("b", 2048, 1).unwrap();
        let key_first = [
            a.private_key_pem().as_slice(),
            a.certificate_pem().as_slice(),
        ]
        .concat();
        let cert_first = [
            a.certificate_pem().as_slice(),
            a.private_key_pem().as_slice(),
        ]
        .concat();
        for pem in [&key_first, &cert_first] {
            let key = DecryptionKey::from_bytes(pem, None).unwrap();
            assert_eq!(key.thumbprint(), a.thumbprint());
        }
        let mixed = [
            a.private_key_pem().as_slice(),
            b.certificate_pem().as_slice(),
        ]
        .concat();
        assert!(matches!(
            DecryptionKey::from_bytes(&mixed, None),
            Err(KeyError::Mismatch)
        ));
        assert!(matches!(
            DecryptionKey::from_bytes(&a.certificate_pem(), None),
            Err(KeyError::Unreadable(_))
        ));
        assert!(matches!(
            DecryptionKey::from_bytes(b"garbage", None),
            Err(KeyError::Unreadable(_))
        ));
        assert!(matches!(
            DecryptionKey::from_bytes(b"", Some("a\0b")),
            Err(KeyError::Unreadable(_))
        ));
    }

    #[test]
    fn pkcs12_with_and_without_the_right_password() {
        let a = generate_certificate("a", 2048, 1).unwrap();
        let p12 = Pkcs12::builder()
            .name("a")
            .pkey(a.key().private_key())
            .cert(a.key().certificate())
            .build2("pw")
            .unwrap()
            .to_der()
            .unwrap();
        let key = DecryptionKey::from_bytes(&p12, Some("pw")).unwrap();
        assert_eq!(key.thumbprint(), a.thumbprint());
        assert!(DecryptionKey::from_bytes(&p12, Some("wrong")).is_err());
        assert!(DecryptionKey::from_bytes(&p12, None).is_err());
    }

    #[test]
    fn ring_specs_ids_and_debug() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate_certificate("a", 2048, 1).unwrap();
        let path = dir.path().join("a.pem");
        std::fs::write(&path, a.key_and_certificate_pem().as_slice()).unwrap();
        let mut ring = KeyRing::new();
        ring.load_spec(&format!("team/cert-1={}", path.display()), None)
            .unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["team/cert-1"]);
        assert!(matches!(
            ring.load_spec(&format!("team/cert-1={}", path.display()), None),
            Err(KeyError::DuplicateId(_))
        ));
        for bad in ["nopath", "=x", "id="] {
            assert!(
                matches!(ring.load_spec(bad, None), Err(KeyError::BadSpec)),
                "{bad}"
            );
        }
        assert!(matches!(
            ring.load_spec("x=/nonexistent/key.pem", None),
            Err(KeyError::Io(_))
        ));
        let debug = format!("{ring:?}");
        assert!(debug.contains(a.thumbprint()), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
