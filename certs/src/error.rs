//! Why a certificate or key file was refused.

use std::path::PathBuf;

/// A certificate, key or CA file that cannot be served or trusted. Each
/// variant names the file, so a log line says which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or a broken one.
    #[error("{path}: no valid PEM certificate ({reason})")]
    BadCertificatePem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// A certificate in the file is not valid X.509.
    #[error("{path}: certificate {index} of the chain is not valid X.509 ({reason})")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Position in the chain, 0 for the leaf.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// The file holds no PEM private key, or a broken one.
    #[error("{path}: no valid PEM private key ({reason})")]
    BadKeyPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key is of a type or size that cannot sign handshakes.
    #[error("{path}: unsupported private key ({reason})")]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What the signer said.
        reason: String,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("{key} is not the private key of the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The leaf certificate's validity has ended.
    #[error("{path}: the certificate expired at {not_after} (Unix time)")]
    Expired {
        /// The file.
        path: PathBuf,
        /// End of validity, seconds since the Unix epoch.
        not_after: i64,
    },
    /// The leaf certificate's validity has not started.
    #[error("{path}: the certificate is not valid before {not_before} (Unix time)")]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// Start of validity, seconds since the Unix epoch.
        not_before: i64,
    },
    /// The leaf certificate names no DNS host in its subject alternative
    /// names, so no SNI could select it.
    #[error("{path}: the certificate has no DNS names in subjectAltName")]
    NoNames {
        /// The file.
        path: PathBuf,
    },
}
