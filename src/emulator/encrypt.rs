//! Graph's side of rich notifications (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>): encrypt a resource
//! to a subscription's certificate, exactly as the decryptor expects.
//!
//! Written from the protocol, not by running the decryptor backwards: a
//! fresh 32-byte key per item; AES-256-CBC with PKCS#7 and IV = the key's
//! first 16 bytes; HMAC-SHA256 of the raw ciphertext; the key wrapped with
//! RSA-OAEP (SHA-1, MGF1-SHA-1).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::encrypt::Encrypter;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Padding;
use openssl::sign::Signer;
use openssl::symm::{Cipher, encrypt};
use openssl::x509::X509Ref;
use zeroize::Zeroizing;

use crate::notification::EncryptedContent;

/// The upper-case hex SHA-1 of a certificate's DER encoding, as Graph puts
/// in `encryptionCertificateThumbprint`.
///
/// # Errors
///
/// OpenSSL errors encoding or hashing the certificate.
pub fn thumbprint(certificate: &X509Ref) -> Result<String, ErrorStack> {
    let digest = certificate.digest(MessageDigest::sha1())?;
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect())
}

/// Encrypts one resource (its JSON) to `certificate` for the subscription
/// whose `encryptionCertificateId` is `certificate_id`.
///
/// # Errors
///
/// OpenSSL errors (a certificate without an RSA key, for one).
pub fn encrypt_resource(
    certificate: &X509Ref,
    certificate_id: &str,
    resource_json: &[u8],
) -> Result<EncryptedContent, ErrorStack> {
    let mut key = Zeroizing::new([0u8; 32]);
    crate::random::fill(key.as_mut());
    let ciphertext = encrypt(
        Cipher::aes_256_cbc(),
        key.as_ref(),
        Some(&key[..16]),
        resource_json,
    )?;

    let hmac_key = PKey::hmac(key.as_ref())?;
    let mut signer = Signer::new(MessageDigest::sha256(), &hmac_key)?;
    signer.update(&ciphertext)?;
    let signature = signer.sign_to_vec()?;

    let public_key = certificate.public_key()?;
    let mut encrypter = Encrypter::new(&public_key)?;
    encrypter.set_rsa_padding(Padding::PKCS1_OAEP)?;
    encrypter.set_rsa_oaep_md(MessageDigest::sha1())?;
    encrypter.set_rsa_mgf1_md(MessageDigest::sha1())?;
    let mut wrapped = vec![0u8; encrypter.encrypt_len(key.as_ref())?];
    let n = encrypter.encrypt(key.as_ref(), &mut wrapped)?;
    wrapped.truncate(n);

    Ok(EncryptedContent {
        data: STANDARD.encode(&ciphertext),
        data_key: STANDARD.encode(&wrapped),
        data_signature: STANDARD.encode(&signature),
        encryption_certificate_id: certificate_id.to_owned(),
        encryption_certificate_thumbprint: thumbprint(certificate)?,
        ..EncryptedContent::default()
    })
}

#[cfg(test)]
mod tests {
    use openssl::pkcs12::Pkcs12;

    use super::*;

    /// The .NET SDK's test certificate has the thumbprint Microsoft's vector names.
    #[test]
    fn thumbprint_of_the_dotnet_vector_certificate() {
        let vector: serde_json::Value = serde_json::from_str(include_str!(
            "../../testdata/dotnet-sdk-rich-notification.json"
        ))
        .unwrap();
        let der = STANDARD
            .decode(vector["pkcs12_base64"].as_str().unwrap())
            .unwrap();
        // The .NET file is encrypted with RC2-40, which OpenSSL 3 keeps in its
        // legacy provider; `true` keeps the default provider available too.
        let _legacy = openssl::provider::Provider::try_load(None, "legacy", true).unwrap();
        let parsed = Pkcs12::from_der(&der).unwrap().parse2("rich").unwrap();
        assert_eq!(
            thumbprint(&parsed.cert.unwrap()).unwrap(),
            vector["encryptedContent"]["encryptionCertificateThumbprint"]
                .as_str()
                .unwrap()
        );
    }

    #[test]
    fn output_has_the_shapes_of_section_6() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let mut builder = openssl::x509::X509::builder().unwrap();
        builder.set_pubkey(&key).unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = builder.build();
        let content = encrypt_resource(&cert, "cert-1", br#"{"id":"1"}"#).unwrap();
        assert_eq!(STANDARD.decode(&content.data_key).unwrap().len(), 256);
        assert_eq!(STANDARD.decode(&content.data_signature).unwrap().len(), 32);
        assert_eq!(
            STANDARD.decode(&content.data).unwrap().len(),
            16,
            "10 bytes pad to one block"
        );
        assert_eq!(content.encryption_certificate_id, "cert-1");
        assert_eq!(content.encryption_certificate_thumbprint.len(), 40);
        let again = encrypt_resource(&cert, "cert-1", br#"{"id":"1"}"#).unwrap();
        assert_ne!(content.data, again.data, "a fresh key per item");
    }
}
