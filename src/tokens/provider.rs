//! An OpenSSL backend for `jsonwebtoken`: RS256 signing and verification.
//!
//! `jsonwebtoken` 11 leaves its cryptography to a pluggable provider (its
//! own are `aws-lc-rs` and RustCrypto). The crate keeps one crypto stack,
//! OpenSSL, so this adapter supplies RS256 — the only algorithm Graph's
//! validation tokens and Entra access tokens use — and refuses every other.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::sign::{Signer, Verifier};

static OPENSSL: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::UnsupportedAlgorithm.into()),
        compute_digest,
    },
};

/// Makes this crate's OpenSSL provider `jsonwebtoken`'s process default,
/// unless a default is already in place (an app's own choice wins; any
/// provider verifies RS256 the same way). The crate calls it before it
/// touches a JWT; an app that uses `jsonwebtoken` itself may call it first.
pub fn install() {
    let _ = OPENSSL.install_default();
}

fn provider_error(e: impl std::fmt::Display) -> Error {
    ErrorKind::Provider(e.to_string()).into()
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if *algorithm != Algorithm::RS256 {
        return Err(ErrorKind::UnsupportedAlgorithm.into());
    }
    // `EncodingKey::from_rsa_pem`/`from_rsa_der` hold a PKCS#1 RSAPrivateKey.
    let rsa = Rsa::private_key_from_der(key.as_bytes())
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    let key = PKey::from_rsa(rsa).map_err(provider_error)?;
    Ok(Box::new(Rs256Signer(key)))
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if *algorithm != Algorithm::RS256 {
        return Err(ErrorKind::UnsupportedAlgorithm.into());
    }
    let rsa = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => Rsa::public_key_from_der_pkcs1(der)
            .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        DecodingKeyKind::RsaModulusExponent { n, e } => Rsa::from_public_components(
            BigNum::from_slice(n).map_err(provider_error)?,
            BigNum::from_slice(e).map_err(provider_error)?,
        )
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
    };
    let key = PKey::from_rsa(rsa).map_err(provider_error)?;
    Ok(Box::new(Rs256Verifier(key)))
}

struct Rs256Signer(PKey<openssl::pkey::Private>);

impl signature::Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.0).map_err(signature::Error::from_source)?;
        signer
            .sign_oneshot_to_vec(msg)
            .map_err(signature::Error::from_source)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

struct Rs256Verifier(PKey<Public>);

impl signature::Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let mut verifier = Verifier::new(MessageDigest::sha256(), &self.0)
            .map_err(signature::Error::from_source)?;
        match verifier.verify_oneshot(signature, msg) {
            Ok(true) => Ok(()),
            Ok(false) => Err(signature::Error::new()),
            Err(e) => Err(signature::Error::from_source(e)),
        }
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let rsa =
        Rsa::private_key_from_der(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok((rsa.n().to_vec(), rsa.e().to_vec()))
}

fn rsa_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let rsa =
        Rsa::public_key_from_der_pkcs1(der).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
    Ok((rsa.n().to_vec(), rsa.e().to_vec()))
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let digest = match hash {
        ThumbprintHash::SHA256 => MessageDigest::sha256(),
        ThumbprintHash::SHA384 => MessageDigest::sha384(),
        ThumbprintHash::SHA512 => MessageDigest::sha512(),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    openssl::hash::hash(digest, data)
        .map(|d| d.to_vec())
        .map_err(provider_error)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Header, Validation, decode, encode};
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    #[test]
    fn rs256_round_trip_and_tampering() {
        install();
        let rsa = Rsa::generate(2048).unwrap();
        let private = EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap());
        let public = DecodingKey::from_rsa_raw_components(&rsa.n().to_vec(), &rsa.e().to_vec());
        let claims = Claims {
            sub: "x".into(),
            exp: 4_000_000_000,
        };
        let token = encode(&Header::new(Algorithm::RS256), &claims, &private).unwrap();
        let decoded =
            decode::<Claims>(&token, &public, &Validation::new(Algorithm::RS256)).unwrap();
        assert_eq!(decoded.claims, claims);

        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(decode::<Claims>(&tampered, &public, &Validation::new(Algorithm::RS256)).is_err());

        let other = Rsa::generate(2048).unwrap();
        let other = DecodingKey::from_rsa_raw_components(&other.n().to_vec(), &other.e().to_vec());
        assert!(decode::<Claims>(&token, &other, &Validation::new(Algorithm::RS256)).is_err());
        assert!(
            encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"k")
            )
            .is_err()
        );
    }
}
