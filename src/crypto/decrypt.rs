//! Decrypting `encryptedContent` (Microsoft Learn, "Set up change notifications that include resource data", <https://learn.microsoft.com/graph/change-notifications-with-resource-data>), and the pool RSA runs on.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use openssl::encrypt::Decrypter;
use openssl::hash::MessageDigest;
use openssl::md::Md;
use openssl::md_ctx::MdCtx;
use openssl::pkey::PKey;
use openssl::rsa::Padding;
use openssl::symm::{Cipher, decrypt};
use serde_json::Value;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::KeyRing;
use crate::notification::EncryptedContent;

/// Length of the symmetric key Graph wraps: AES-256 and HMAC-SHA256 share it.
const KEY_LEN: usize = 32;
/// AES block size; the IV is the key's first block.
const BLOCK: usize = 16;

/// Why an item's `encryptedContent` was not decrypted.
///
/// Each variant has a stable label ([`reason`](Self::reason)) used for the
/// `items_rejected{reason}` metric and by `msgraph-webhooks inspect`.
/// Failures to unwrap the key are deliberately one variant: telling a wrong
/// key from a wrongly padded one would be a padding oracle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecryptError {
    /// No key in the ring has this `encryptionCertificateId`.
    UnknownCertificateId,
    /// `encryptionCertificateThumbprint` is not the thumbprint of the
    /// certificate registered under the id.
    ThumbprintMismatch,
    /// `data`, `dataKey` or `dataSignature` is not standard padded base64.
    InvalidBase64,
    /// The ciphertext is empty or not a whole number of AES blocks.
    TruncatedCiphertext,
    /// RSA-OAEP (SHA-1) did not yield a 32-byte key: encrypted to another
    /// key, wrapped with another padding (PKCS#1 v1.5, OAEP-SHA-256), or
    /// tampered with.
    KeyUnwrap,
    /// The HMAC-SHA256 of the ciphertext is not `dataSignature`: the
    /// ciphertext or the signature was altered. Nothing was decrypted.
    SignatureMismatch,
    /// The signature matched but the AES-CBC plaintext has invalid PKCS#7
    /// padding.
    BadPadding,
    /// The plaintext is not JSON.
    InvalidPlaintext,
    /// The decryption task failed (the pool is shutting down).
    Internal,
}

impl DecryptError {
    /// The reason as a stable snake_case label, e.g. `signature_mismatch`.
    pub fn reason(self) -> &'static str {
        match self {
            DecryptError::UnknownCertificateId => "unknown_certificate_id",
            DecryptError::ThumbprintMismatch => "thumbprint_mismatch",
            DecryptError::InvalidBase64 => "invalid_base64",
            DecryptError::TruncatedCiphertext => "truncated_ciphertext",
            DecryptError::KeyUnwrap => "key_unwrap_failed",
            DecryptError::SignatureMismatch => "signature_mismatch",
            DecryptError::BadPadding => "bad_padding",
            DecryptError::InvalidPlaintext => "invalid_plaintext",
            DecryptError::Internal => "decrypt_internal_error",
        }
    }
}

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecryptError::UnknownCertificateId => "no key for this encryptionCertificateId",
            DecryptError::ThumbprintMismatch => {
                "encryptionCertificateThumbprint does not match the certificate"
            }
            DecryptError::InvalidBase64 => "encrypted content is not valid base64",
            DecryptError::TruncatedCiphertext => "ciphertext is not a whole number of blocks",
            DecryptError::KeyUnwrap => "the data key does not unwrap with RSA-OAEP-SHA1",
            DecryptError::SignatureMismatch => "dataSignature does not match the ciphertext",
            DecryptError::BadPadding => "invalid padding after decryption",
            DecryptError::InvalidPlaintext => "decrypted content is not JSON",
            DecryptError::Internal => "decryption task failed",
        })
    }
}

impl std::error::Error for DecryptError {}

impl KeyRing {
    /// Decrypts one item's `encryptedContent` to the resource's JSON bytes.
    ///
    /// Blocking and CPU-heavy (one RSA private-key operation): call it from a
    /// blocking context, or use [`Decryptor`].
    ///
    /// # Errors
    ///
    /// [`DecryptError`] at the first check that fails, in the order of the
    /// variants.
    pub fn decrypt(&self, content: &EncryptedContent) -> Result<Vec<u8>, DecryptError> {
        self.decrypt_with(content, &mut Contexts::default())
    }

    /// Decrypts several items to JSON, reusing the RSA contexts across them.
    /// Blocking and CPU-heavy, like [`decrypt`](Self::decrypt).
    pub fn decrypt_json_many(
        &self,
        contents: &[EncryptedContent],
    ) -> Vec<Result<Value, DecryptError>> {
        let mut contexts = Contexts::default();
        contents
            .iter()
            .map(|content| {
                let plaintext = Zeroizing::new(self.decrypt_with(content, &mut contexts)?);
                serde_json::from_slice(&plaintext).map_err(|_| DecryptError::InvalidPlaintext)
            })
            .collect()
    }

    fn decrypt_with<'a>(
        &'a self,
        content: &EncryptedContent,
        contexts: &mut Contexts<'a>,
    ) -> Result<Vec<u8>, DecryptError> {
        let key = self
            .get(&content.encryption_certificate_id)
            .ok_or(DecryptError::UnknownCertificateId)?;
        // Both values are public; case differs between Graph's docs and samples.
        if !content
            .encryption_certificate_thumbprint
            .eq_ignore_ascii_case(key.thumbprint())
        {
            return Err(DecryptError::ThumbprintMismatch);
        }
        let decode = |s: &str| STANDARD.decode(s).map_err(|_| DecryptError::InvalidBase64);
        let wrapped = decode(&content.data_key)?;
        let ciphertext = decode(&content.data)?;
        let signature = decode(&content.data_signature)?;
        if ciphertext.is_empty() || ciphertext.len() % BLOCK != 0 {
            return Err(DecryptError::TruncatedCiphertext);
        }

        let symmetric = contexts.unwrap_key(
            &content.encryption_certificate_id,
            key.private_key(),
            &wrapped,
        )?;

        let expected = contexts.hmac_sha256(&symmetric[..], &ciphertext)?;
        // `ct_eq` on slices of different lengths is false, in constant time.
        if !bool::from(expected.as_slice().ct_eq(&signature)) {
            return Err(DecryptError::SignatureMismatch);
        }
        decrypt(
            Cipher::aes_256_cbc(),
            &symmetric[..],
            Some(&symmetric[..BLOCK]),
            &ciphertext,
        )
        .map_err(|_| DecryptError::BadPadding)
    }

    /// [`decrypt`](Self::decrypt), then parses the plaintext as JSON.
    ///
    /// # Errors
    ///
    /// As [`decrypt`](Self::decrypt); [`DecryptError::InvalidPlaintext`].
    pub fn decrypt_json(&self, content: &EncryptedContent) -> Result<Value, DecryptError> {
        let plaintext = Zeroizing::new(self.decrypt(content)?);
        serde_json::from_slice(&plaintext).map_err(|_| DecryptError::InvalidPlaintext)
    }
}

/// The OpenSSL contexts a batch reuses from item to item: RSA-OAEP by
/// certificate id, and one digest context for the HMAC.
#[derive(Default)]
struct Contexts<'a> {
    unwrappers: Vec<(String, Decrypter<'a>)>,
    digest: Option<MdCtx>,
}

impl<'a> Contexts<'a> {
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1, empty label — and nothing else: a
    /// failed OAEP check is an error, there is no fallback to another padding.
    fn unwrap_key(
        &mut self,
        id: &str,
        key: &'a PKey<openssl::pkey::Private>,
        wrapped: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, DecryptError> {
        let fail = |_| DecryptError::KeyUnwrap;
        let at = match self.unwrappers.iter().position(|(known, _)| known == id) {
            Some(at) => at,
            None => {
                let mut decrypter = Decrypter::new(key).map_err(fail)?;
                decrypter
                    .set_rsa_padding(Padding::PKCS1_OAEP)
                    .map_err(fail)?;
                decrypter
                    .set_rsa_oaep_md(MessageDigest::sha1())
                    .map_err(fail)?;
                decrypter
                    .set_rsa_mgf1_md(MessageDigest::sha1())
                    .map_err(fail)?;
                self.unwrappers.push((id.to_owned(), decrypter));
                self.unwrappers.len() - 1
            }
        };
        let decrypter = &self.unwrappers[at].1;
        let mut out = Zeroizing::new(vec![0u8; decrypter.decrypt_len(wrapped).map_err(fail)?]);
        let n = decrypter.decrypt(wrapped, &mut out).map_err(fail)?;
        let mut symmetric = Zeroizing::new([0u8; KEY_LEN]);
        if n != KEY_LEN {
            return Err(DecryptError::KeyUnwrap);
        }
        symmetric.copy_from_slice(&out[..KEY_LEN]);
        Ok(symmetric)
    }

    /// HMAC-SHA256 (RFC 2104) of `message` under the item's key, on
    /// OpenSSL's SHA-256 with one digest context for the whole batch.
    ///
    /// Written out rather than taken from `openssl::sign::Signer`: the crate
    /// offers HMAC only through a new HMAC `PKey` and signing context per
    /// key, and every item has its own key — on OpenSSL 3 that set-up costs
    /// ~9 µs per item, seven times the hashing itself (the crate does not
    /// bind `EVP_MAC`). Tested against OpenSSL's HMAC and RFC 4231's vectors.
    ///
    /// `key` is at most SHA-256's 64-byte block (Graph's is 32 bytes);
    /// a longer one is an internal error, not hashed first as RFC 2104 would.
    fn hmac_sha256(&mut self, key: &[u8], message: &[u8]) -> Result<[u8; 32], DecryptError> {
        let internal = |_| DecryptError::Internal;
        let ctx = match &mut self.digest {
            Some(ctx) => ctx,
            None => self.digest.insert(MdCtx::new().map_err(internal)?),
        };
        // The key, zero-padded to SHA-256's block, XOR ipad; then XOR opad.
        let mut pad = Zeroizing::new([0u8; 64]);
        pad.get_mut(..key.len())
            .ok_or(DecryptError::Internal)?
            .copy_from_slice(key);
        pad.iter_mut().for_each(|b| *b ^= 0x36);
        let inner = sha256(ctx, &[&pad[..], message]).map_err(internal)?;
        pad.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        sha256(ctx, &[&pad[..], &inner]).map_err(internal)
    }
}

/// SHA-256 of the concatenated `parts`, on a reused context.
fn sha256(ctx: &mut MdCtx, parts: &[&[u8]]) -> Result<[u8; 32], openssl::error::ErrorStack> {
    ctx.digest_init(Md::sha256())?;
    for part in parts {
        ctx.digest_update(part)?;
    }
    let mut digest = [0u8; 32];
    ctx.digest_final(&mut digest)?;
    Ok(digest)
}

/// Decrypts on a pool of threads of its own, one per core, so RSA never
/// runs on the threads that answer Graph and a burst of rich notifications
/// cannot starve them.
///
/// The pool's threads take queued jobs one after the other without going
/// back through the async runtime, so the cores stay busy while work is
/// queued. Cheap to clone; clones share the ring and the pool, whose threads
/// end when the last clone is dropped.
#[derive(Clone)]
pub struct Decryptor {
    ring: Arc<KeyRing>,
    pool: Arc<Pool>,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("ring", &self.ring)
            .field("threads", &self.pool.threads)
            .finish()
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The RSA threads and their queue.
struct Pool {
    /// `None` when no thread could be started.
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    threads: usize,
}

impl Pool {
    fn start(threads: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let mut started = 0;
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("rsa-{n}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue, the others on the lock.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else {
                            return;
                        };
                        // A panic drops the job's reply, which reports an
                        // internal error; the thread keeps serving.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        Self {
            jobs: (started > 0).then_some(jobs),
            threads: started,
        }
    }

    /// Runs `f` on the pool and waits for its result.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.jobs.as_ref()?.send(job).ok()?;
        result.await.ok()
    }
}

impl Decryptor {
    /// A decryptor with one RSA thread per core.
    pub fn new(ring: Arc<KeyRing>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with_concurrency(ring, cores)
    }

    /// A decryptor with `concurrency` (at least 1) RSA threads.
    pub fn with_concurrency(ring: Arc<KeyRing>, concurrency: usize) -> Self {
        Self {
            ring,
            pool: Arc::new(Pool::start(concurrency.max(1))),
        }
    }

    /// The key ring.
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Decrypts a batch to JSON as one job on the pool (one hand-off for the
    /// batch instead of one per item), reusing the RSA contexts.
    pub async fn decrypt_many(
        &self,
        contents: Vec<EncryptedContent>,
    ) -> Vec<Result<Value, DecryptError>> {
        let n = contents.len();
        let ring = self.ring.clone();
        self.pool
            .run(move || ring.decrypt_json_many(&contents))
            .await
            .unwrap_or_else(|| vec![Err(DecryptError::Internal); n])
    }

    /// Decrypts `content` to JSON on the pool.
    ///
    /// # Errors
    ///
    /// As [`KeyRing::decrypt_json`]; [`DecryptError::Internal`] if the pool
    /// could not run it.
    pub async fn decrypt(&self, content: &EncryptedContent) -> Result<Value, DecryptError> {
        let ring = self.ring.clone();
        let content = content.clone();
        self.pool
            .run(move || ring.decrypt_json(&content))
            .await
            .unwrap_or(Err(DecryptError::Internal))
    }
}

#[cfg(test)]
mod tests {
    use openssl::encrypt::Encrypter;
    use openssl::symm::Crypter;

    use super::*;
    use crate::crypto::{DecryptionKey, generate_certificate};

    /// Microsoft's .NET SDK vector (Microsoft's .NET SDK test vector, msgraph-sdk-dotnet-core `IDecryptableContentExtensionsTests.cs`): the one proof of interop.
    #[test]
    fn dotnet_sdk_vector_decrypts_to_hello_world() {
        let vector: Value = serde_json::from_str(include_str!(
            "../../testdata/dotnet-sdk-rich-notification.json"
        ))
        .unwrap();
        let p12 = STANDARD
            .decode(vector["pkcs12_base64"].as_str().unwrap())
            .unwrap();
        let key = DecryptionKey::from_bytes(&p12, Some("rich")).unwrap();
        let content: EncryptedContent =
            serde_json::from_value(vector["encryptedContent"].clone()).unwrap();
        let mut ring = KeyRing::new();
        ring.insert(content.encryption_certificate_id.clone(), key)
            .unwrap();
        let data = ring.decrypt_json(&content).unwrap();
        assert_eq!(data["body"]["content"], "Hello World");
        assert_eq!(data["id"], "1625126194597");

        // Lower-case thumbprints are the same certificate.
        let mut lower = content.clone();
        lower.encryption_certificate_thumbprint =
            lower.encryption_certificate_thumbprint.to_lowercase();
        assert!(ring.decrypt_json(&lower).is_ok());
    }

    struct Fixture {
        ring: KeyRing,
        cert: openssl::x509::X509,
        id: &'static str,
    }

    fn fixture() -> Fixture {
        let generated = generate_certificate("unit", 2048, 1).unwrap();
        let cert = generated.key().certificate().to_owned();
        let mut ring = KeyRing::new();
        ring.insert("cert-1", generated.key().clone()).unwrap();
        Fixture {
            ring,
            cert,
            id: "cert-1",
        }
    }

    /// Graph's encryption steps, with every part chosen by the test.
    fn seal(
        fixture: &Fixture,
        key: &[u8; 32],
        padded_plaintext: &[u8],
        padding: Padding,
    ) -> EncryptedContent {
        let mut crypter = Crypter::new(
            Cipher::aes_256_cbc(),
            openssl::symm::Mode::Encrypt,
            key,
            Some(&key[..16]),
        )
        .unwrap();
        crypter.pad(false);
        let mut ciphertext = vec![0u8; padded_plaintext.len() + 16];
        let mut n = crypter.update(padded_plaintext, &mut ciphertext).unwrap();
        n += crypter.finalize(&mut ciphertext[n..]).unwrap();
        ciphertext.truncate(n);
        let signature = openssl_hmac_sha256(key, &ciphertext);
        let public = fixture.cert.public_key().unwrap();
        let mut encrypter = Encrypter::new(&public).unwrap();
        encrypter.set_rsa_padding(padding).unwrap();
        if padding == Padding::PKCS1_OAEP {
            encrypter.set_rsa_oaep_md(MessageDigest::sha1()).unwrap();
            encrypter.set_rsa_mgf1_md(MessageDigest::sha1()).unwrap();
        }
        let mut wrapped = vec![0u8; encrypter.encrypt_len(key).unwrap()];
        let n = encrypter.encrypt(key, &mut wrapped).unwrap();
        wrapped.truncate(n);
        EncryptedContent {
            data: STANDARD.encode(&ciphertext),
            data_key: STANDARD.encode(&wrapped),
            data_signature: STANDARD.encode(&signature),
            encryption_certificate_id: fixture.id.to_owned(),
            encryption_certificate_thumbprint: super::super::keyring::thumbprint(&fixture.cert)
                .unwrap(),
            ..EncryptedContent::default()
        }
    }

    /// OpenSSL's own HMAC, to check the decryptor's against.
    fn openssl_hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let key = PKey::hmac(key).unwrap();
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), &key).unwrap();
        signer.sign_oneshot_to_vec(message).unwrap()
    }

    #[test]
    fn hmac_matches_rfc_4231_and_openssl() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        // RFC 4231 §4.2–4.5 (the cases whose key fits one block).
        let cases: [(Vec<u8>, Vec<u8>, &str); 4] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                (1..=25).collect(),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
        ];
        let mut contexts = Contexts::default();
        for (key, message, mac) in &cases {
            assert_eq!(
                contexts.hmac_sha256(key, message).unwrap().to_vec(),
                hex(mac)
            );
        }
        // Graph's 32-byte keys, messages of every length around the block
        // sizes, one context reused throughout as a batch does.
        let mut key = [0u8; 32];
        for len in 0..300 {
            crate::random::fill(&mut key);
            let mut message = vec![0u8; len];
            crate::random::fill(&mut message);
            assert_eq!(
                contexts.hmac_sha256(&key, &message).unwrap().to_vec(),
                openssl_hmac_sha256(&key, &message),
                "message of {len} bytes"
            );
        }
        // A key longer than a block is refused, not silently mangled.
        assert_eq!(
            contexts.hmac_sha256(&[1; 65], b"x"),
            Err(DecryptError::Internal)
        );
    }

    fn pkcs7(plaintext: &[u8]) -> Vec<u8> {
        let pad = 16 - plaintext.len() % 16;
        let mut out = plaintext.to_vec();
        out.extend(std::iter::repeat_n(u8::try_from(pad).unwrap(), pad));
        out
    }

    const KEY: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";
    const JSON: &[u8] = br#"{"id":"1","body":{"content":"hi"}}"#;

    #[test]
    fn known_answer_and_the_negative_list() {
        let f = fixture();
        let good = seal(&f, &KEY, &pkcs7(JSON), Padding::PKCS1_OAEP);
        assert_eq!(f.ring.decrypt(&good).unwrap(), JSON);

        let flip = |b64: &str, at: usize| {
            let mut bytes = STANDARD.decode(b64).unwrap();
            bytes[at] ^= 1;
            STANDARD.encode(bytes)
        };
        let variant = |edit: &dyn Fn(&mut EncryptedContent)| {
            let mut c = good.clone();
            edit(&mut c);
            f.ring.decrypt(&c).unwrap_err()
        };

        assert_eq!(
            variant(&|c| c.data_signature = flip(&c.data_signature, 0)),
            DecryptError::SignatureMismatch
        );
        assert_eq!(
            variant(&|c| c.data = flip(&c.data, 3)),
            DecryptError::SignatureMismatch
        );
        assert_eq!(
            variant(&|c| {
                let mut bytes = STANDARD.decode(&c.data).unwrap();
                bytes.truncate(bytes.len() - 16);
                c.data = STANDARD.encode(bytes);
            }),
            DecryptError::SignatureMismatch,
            "a whole block less: the signature no longer matches"
        );
        assert_eq!(
            variant(&|c| {
                let mut bytes = STANDARD.decode(&c.data).unwrap();
                bytes.truncate(bytes.len() - 5);
                c.data = STANDARD.encode(bytes);
            }),
            DecryptError::TruncatedCiphertext
        );
        assert_eq!(
            variant(&|c| c.data = String::new()),
            DecryptError::TruncatedCiphertext
        );
        assert_eq!(
            variant(&|c| c.data_key = flip(&c.data_key, 100)),
            DecryptError::KeyUnwrap
        );
        assert_eq!(
            variant(&|c| c.encryption_certificate_id = "cert-2".into()),
            DecryptError::UnknownCertificateId
        );
        assert_eq!(
            variant(&|c| c.encryption_certificate_thumbprint = "00".repeat(20)),
            DecryptError::ThumbprintMismatch
        );
        for field in 0..3 {
            let err = variant(&|c| {
                let target = match field {
                    0 => &mut c.data,
                    1 => &mut c.data_key,
                    _ => &mut c.data_signature,
                };
                target.insert(4, '!');
            });
            assert_eq!(err, DecryptError::InvalidBase64, "field {field}");
        }

        // Bad padding behind a valid signature: only the key holder can make it.
        let mut unpadded = pkcs7(JSON);
        let last = unpadded.len() - 1;
        unpadded[last] = 0x11;
        let bad_padding = seal(&f, &KEY, &unpadded, Padding::PKCS1_OAEP);
        assert_eq!(
            f.ring.decrypt(&bad_padding).unwrap_err(),
            DecryptError::BadPadding
        );

        // A key wrapped with PKCS#1 v1.5 is refused, not decrypted to garbage.
        let v15 = seal(&f, &KEY, &pkcs7(JSON), Padding::PKCS1);
        assert_eq!(f.ring.decrypt(&v15).unwrap_err(), DecryptError::KeyUnwrap);

        // The right id but another key: as Graph would after a botched rotation.
        let other = fixture();
        let mut wrong_key = seal(&other, &KEY, &pkcs7(JSON), Padding::PKCS1_OAEP);
        wrong_key.encryption_certificate_thumbprint =
            good.encryption_certificate_thumbprint.clone();
        assert_eq!(
            f.ring.decrypt(&wrong_key).unwrap_err(),
            DecryptError::KeyUnwrap
        );

        // A valid envelope around something that is not JSON.
        let text = seal(&f, &KEY, &pkcs7(b"not json"), Padding::PKCS1_OAEP);
        assert_eq!(
            f.ring.decrypt_json(&text).unwrap_err(),
            DecryptError::InvalidPlaintext
        );
    }

    #[test]
    fn a_wrapped_key_of_another_length_is_refused() {
        let f = fixture();
        let public = f.cert.public_key().unwrap();
        let mut encrypter = Encrypter::new(&public).unwrap();
        encrypter.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
        encrypter.set_rsa_oaep_md(MessageDigest::sha1()).unwrap();
        encrypter.set_rsa_mgf1_md(MessageDigest::sha1()).unwrap();
        let short = [7u8; 16];
        let mut wrapped = vec![0u8; encrypter.encrypt_len(&short).unwrap()];
        let n = encrypter.encrypt(&short, &mut wrapped).unwrap();
        wrapped.truncate(n);
        let mut content = seal(&f, &KEY, &pkcs7(JSON), Padding::PKCS1_OAEP);
        content.data_key = STANDARD.encode(wrapped);
        assert_eq!(
            f.ring.decrypt(&content).unwrap_err(),
            DecryptError::KeyUnwrap
        );
    }

    #[test]
    fn rotation_two_keys_in_one_ring() {
        let a = fixture();
        let b = generate_certificate("b", 3072, 1).unwrap();
        let mut ring = a.ring.clone();
        ring.insert("cert-2", b.key().clone()).unwrap();
        let old = seal(&a, &KEY, &pkcs7(JSON), Padding::PKCS1_OAEP);
        let new = Fixture {
            ring: KeyRing::new(),
            cert: b.key().certificate().to_owned(),
            id: "cert-2",
        };
        let new = seal(&new, &KEY, &pkcs7(br#"{"n":2}"#), Padding::PKCS1_OAEP);
        assert_eq!(ring.decrypt(&old).unwrap(), JSON);
        assert_eq!(ring.decrypt(&new).unwrap(), br#"{"n":2}"#);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_jobs_on_its_own_threads() {
        let pool = Pool::start(2);
        assert_eq!(pool.threads, 2);
        let caller = std::thread::current().id();
        for _ in 0..4 {
            let (name, id) = pool
                .run(|| {
                    let me = std::thread::current();
                    (me.name().map(str::to_owned), me.id())
                })
                .await
                .unwrap();
            assert!(name.unwrap().starts_with("rsa-"));
            assert_ne!(id, caller);
        }
        // A panicking job reports failure, and the pool keeps serving.
        assert_eq!(pool.run(|| -> u8 { panic!("job panics") }).await, None);
        assert_eq!(pool.run(|| 7).await, Some(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decryptor_decrypts_concurrently() {
        let f = fixture();
        let content = seal(&f, &KEY, &pkcs7(JSON), Padding::PKCS1_OAEP);
        let decryptor = Decryptor::with_concurrency(Arc::new(f.ring), 2);
        let runs = (0..8).map(|_| {
            let d = decryptor.clone();
            let c = content.clone();
            tokio::spawn(async move { d.decrypt(&c).await })
        });
        for run in runs {
            assert_eq!(run.await.unwrap().unwrap()["body"]["content"], "hi");
        }
        let mut tampered = content.clone();
        tampered.data_signature = STANDARD.encode([0u8; 32]);
        let results = decryptor
            .decrypt_many(vec![content.clone(), tampered, content])
            .await;
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap()["body"]["content"], "hi");
        assert_eq!(results[1], Err(DecryptError::SignatureMismatch));
        assert_eq!(results[2].as_ref().unwrap()["body"]["content"], "hi");
    }
}
