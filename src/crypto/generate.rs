//! A fresh RSA key and self-signed certificate, for `encryptionCertificate`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509, X509NameBuilder};
use zeroize::Zeroizing;

use super::DecryptionKey;

/// A generated key and its self-signed certificate.
///
/// `Debug` shows the thumbprint only.
#[derive(Clone)]
pub struct GeneratedCertificate {
    key: DecryptionKey,
}

impl fmt::Debug for GeneratedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedCertificate")
            .field("thumbprint", &self.thumbprint())
            .finish_non_exhaustive()
    }
}

/// Why no certificate was generated.
#[derive(Debug)]
#[non_exhaustive]
pub enum GenerateError {
    /// Graph accepts RSA keys of 2048 to 4096 bits only (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
    Bits(u32),
    /// An OpenSSL error.
    OpenSsl(String),
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::Bits(bits) => {
                write!(f, "{bits}-bit keys are not accepted: use 2048 to 4096 bits")
            }
            GenerateError::OpenSsl(e) => write!(f, "key generation failed: {e}"),
        }
    }
}

impl std::error::Error for GenerateError {}

impl From<ErrorStack> for GenerateError {
    fn from(e: ErrorStack) -> Self {
        GenerateError::OpenSsl(e.to_string())
    }
}

/// Generates an RSA key of `bits` (2048–4096) and a certificate for it,
/// self-signed with SHA-256, subject `CN=common_name`, valid from now for
/// `days` days. Graph does not check the issuer (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>).
///
/// # Errors
///
/// [`GenerateError::Bits`] outside 2048–4096; OpenSSL errors.
pub fn generate_certificate(
    common_name: &str,
    bits: u32,
    days: u32,
) -> Result<GeneratedCertificate, GenerateError> {
    if !(2048..=4096).contains(&bits) {
        return Err(GenerateError::Bits(bits));
    }
    let key = PKey::from_rsa(Rsa::generate(bits)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    let name = name.build();

    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(days)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .key_encipherment()
            .data_encipherment()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(ski)?;
    builder.sign(&key, MessageDigest::sha256())?;
    let key = DecryptionKey::new(key, builder.build())
        .map_err(|e| GenerateError::OpenSsl(e.to_string()))?;
    Ok(GeneratedCertificate { key })
}

impl GeneratedCertificate {
    /// The key and certificate, to put in a [`KeyRing`](super::KeyRing).
    pub fn key(&self) -> &DecryptionKey {
        &self.key
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_key_pem(&self) -> Zeroizing<Vec<u8>> {
        // Invariant: serialising an in-memory RSA key only fails on allocation failure.
        Zeroizing::new(
            self.key
                .private_key()
                .private_key_to_pem_pkcs8()
                .expect("an RSA key serialises"),
        )
    }

    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> Vec<u8> {
        // Invariant: a certificate OpenSSL built serialises.
        self.key
            .certificate()
            .to_pem()
            .expect("a built certificate serialises")
    }

    /// Private key then certificate, one PEM file: what `--key ID=PATH` reads.
    pub fn key_and_certificate_pem(&self) -> Zeroizing<Vec<u8>> {
        let mut pem = self.private_key_pem();
        pem.extend_from_slice(&self.certificate_pem());
        pem
    }

    /// Base64 of the DER certificate, no line breaks: the subscription's
    /// `encryptionCertificate`.
    pub fn encryption_certificate(&self) -> String {
        // Invariant: a certificate OpenSSL built serialises.
        let der = self
            .key
            .certificate()
            .to_der()
            .expect("a built certificate serialises");
        STANDARD.encode(der)
    }

    /// Upper-case hex SHA-1 of the DER certificate, what Graph will send as
    /// `encryptionCertificateThumbprint`.
    pub fn thumbprint(&self) -> &str {
        self.key.thumbprint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_round_trips_and_checks_bits() {
        let generated = generate_certificate("unit", 2048, 30).unwrap();
        let der = STANDARD.decode(generated.encryption_certificate()).unwrap();
        let cert = X509::from_der(&der).unwrap();
        assert_eq!(
            super::super::keyring::thumbprint(&cert).unwrap(),
            generated.thumbprint()
        );
        assert_eq!(cert.public_key().unwrap().bits(), 2048);
        let cn = cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .unwrap()
            .data()
            .to_string()
            .unwrap();
        assert_eq!(cn, "unit");
        assert!(
            cert.verify(&cert.public_key().unwrap()).unwrap(),
            "self-signed"
        );
        let reread = DecryptionKey::from_bytes(&generated.key_and_certificate_pem(), None).unwrap();
        assert_eq!(reread.thumbprint(), generated.thumbprint());
        assert!(!format!("{generated:?}").contains("PRIVATE"));
        for bits in [0, 1024, 2047, 4097, 8192] {
            assert!(matches!(
                generate_certificate("x", bits, 1),
                Err(GenerateError::Bits(b)) if b == bits
            ));
        }
    }
}
