//! `msgraph-webhooks cert new`: a key and self-signed certificate for rich
//! notifications.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::crypto::generate_certificate;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write DIR/key.pem (private key + certificate, for --key ID=DIR/key.pem),
    /// DIR/private-key.pem (the key alone, for other runtimes, e.g. Node's
    /// crypto.privateDecrypt) and DIR/cert.pem; print the subscription's
    /// encryptionCertificate and the thumbprint Graph will send.
    New(NewArgs),
}

#[derive(Debug, clap::Args)]
struct NewArgs {
    /// Directory to write into (created if missing; existing files are not
    /// overwritten).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CERT_OUT")]
    out: PathBuf,

    /// Subject common name of the certificate.
    #[arg(
        long,
        default_value = "msgraph-webhooks",
        env = "MSGRAPH_WEBHOOKS_CERT_CN"
    )]
    cn: String,

    /// RSA key size, 2048 to 4096.
    #[arg(long, default_value_t = 2048, env = "MSGRAPH_WEBHOOKS_CERT_BITS")]
    bits: u32,

    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, env = "MSGRAPH_WEBHOOKS_CERT_DAYS")]
    days: u32,
}

pub(crate) fn run(args: Args) -> Result<ExitCode, BoxError> {
    let Command::New(args) = args.command;
    let generated = generate_certificate(&args.cn, args.bits, args.days)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let key_path = args.out.join("key.pem");
    let private_key_path = args.out.join("private-key.pem");
    let cert_path = args.out.join("cert.pem");
    for path in [&key_path, &private_key_path, &cert_path] {
        if path.exists() {
            return Err(format!("{} exists; not overwriting it", path.display()).into());
        }
    }
    write_new(&key_path, &generated.key_and_certificate_pem(), true)?;
    write_new(&private_key_path, &generated.private_key_pem(), true)?;
    write_new(&cert_path, &generated.certificate_pem(), false)?;
    let summary = serde_json::json!({
        "key": key_path,
        "privateKey": private_key_path,
        "certificate": cert_path,
        "files": {
            "key": "private key and certificate: pass it as --key ID=PATH to listen, work and inspect",
            "privateKey": "the private key alone (PKCS#8 PEM), for code of your own in other runtimes",
            "certificate": "the certificate alone; encryptionCertificate below is its DER in base64",
        },
        "encryptionCertificate": generated.encryption_certificate(),
        "thumbprint": generated.thumbprint(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}

/// Creates `path`, refusing to replace an existing file; private files are
/// readable by the owner only.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), BoxError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
