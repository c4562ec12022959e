//! TLS identities and trust for listeners and clients.
//!
//! quiche runs TLS 1.3 through BoringSSL; this module builds the BoringSSL context that
//! quiche is given, so certificates can come from files or memory, PEM or DER.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use boring::pkey::{PKey, Private};
use boring::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
use boring::x509::X509;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PEM or DER input did not parse as what it should be.
    #[error("invalid {what}")]
    Parse {
        /// What was being parsed (`"certificate chain"`, `"private key"`, ...).
        what: &'static str,
        /// BoringSSL's error.
        #[source]
        source: boring::error::ErrorStack,
    },
    /// The input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(&'static str),
    /// The private key does not belong to the leaf certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch(#[source] boring::error::ErrorStack),
    /// Generating a self-signed certificate failed.
    #[error("failed to generate a self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    /// BoringSSL refused the configuration.
    #[error("failed to set up the TLS context")]
    Context(#[source] boring::error::ErrorStack),
    /// quiche refused the configuration.
    #[error("failed to set up the QUIC configuration")]
    Quic(#[source] quiche::Error),
}

/// A server's identity: a certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct TlsConfig {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key from files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let cert_pem = read(cert.as_ref())?;
        let key_pem = read(key.as_ref())?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Parses a PEM certificate chain (leaf first) and a PEM private key from memory.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = parse_pem_certs(cert_chain, "certificate chain")?;
        let key = PKey::private_key_from_pem(key).map_err(|source| TlsError::Parse {
            what: "private key",
            source,
        })?;
        Self::new(chain, key)
    }

    /// Parses DER certificates (leaf first) and a DER (PKCS#8 or traditional) private
    /// key from memory.
    pub fn from_der(cert_chain: &[impl AsRef<[u8]>], key: &[u8]) -> Result<Self, TlsError> {
        let chain = cert_chain
            .iter()
            .map(|c| {
                X509::from_der(c.as_ref()).map_err(|source| TlsError::Parse {
                    what: "certificate",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = PKey::private_key_from_der(key).map_err(|source| TlsError::Parse {
            what: "private key",
            source,
        })?;
        Self::new(chain, key)
    }

    /// Generates a self-signed certificate for `names` (DNS names or IP addresses).
    /// Clients must be told to trust it: its PEM is [`SelfSigned::cert_pem`].
    pub fn self_signed(names: &[&str]) -> Result<SelfSigned, TlsError> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names).map_err(TlsError::SelfSigned)?;
        let cert_pem = generated.cert.pem();
        let key_pem = generated.signing_key.serialize_pem();
        let config = Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok(SelfSigned {
            config,
            cert_pem,
            key_pem,
        })
    }

    fn new(chain: Vec<X509>, key: PKey<Private>) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or(TlsError::NoCertificate("certificate chain"))?;
        let leaf_key = leaf.public_key().map_err(TlsError::KeyMismatch)?;
        if !leaf_key.public_eq(&key) {
            return Err(TlsError::KeyMismatch(boring::error::ErrorStack::get()));
        }
        Ok(Self { chain, key })
    }

    /// A server context holding this identity.
    pub(crate) fn server_context(&self) -> Result<SslContextBuilder, TlsError> {
        let mut ctx = SslContextBuilder::new(SslMethod::tls()).map_err(TlsError::Context)?;
        ctx.set_certificate(&self.chain[0])
            .map_err(TlsError::Context)?;
        for extra in &self.chain[1..] {
            ctx.add_extra_chain_cert(extra.clone())
                .map_err(TlsError::Context)?;
        }
        ctx.set_private_key(&self.key).map_err(TlsError::Context)?;
        ctx.check_private_key().map_err(TlsError::KeyMismatch)?;
        Ok(ctx)
    }
}

/// A generated self-signed identity, with its PEM text so clients can trust it.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The identity, ready for a listener.
    pub config: TlsConfig,
    /// The certificate, PEM: give it to clients as a root.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

/// How a client decides whether to trust a server.
///
/// The default verifies the server's certificate chain against the system's roots and
/// its name against the name connected to. [`ClientTlsConfig::insecure`] turns all
/// checks off, and says so in the log on every connection.
#[derive(Clone, Default)]
pub struct ClientTlsConfig {
    roots: Vec<X509>,
    system_roots: Option<bool>,
    insecure: bool,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("roots", &self.roots.len())
            .field("system_roots", &self.uses_system_roots())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl ClientTlsConfig {
    /// Verify against the system's roots (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trust the certificates in this PEM text (one or more).
    ///
    /// Adding roots stops the system roots from being used unless
    /// [`with_system_roots(true)`](Self::with_system_roots) says otherwise.
    pub fn add_root_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        self.roots.extend(parse_pem_certs(pem, "root certificate")?);
        Ok(self)
    }

    /// Also trust this DER certificate.
    pub fn add_root_der(mut self, der: &[u8]) -> Result<Self, TlsError> {
        let cert = X509::from_der(der).map_err(|source| TlsError::Parse {
            what: "root certificate",
            source,
        })?;
        self.roots.push(cert);
        Ok(self)
    }

    /// Also trust the PEM certificates in this file.
    pub fn add_root_pem_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let pem = read(path.as_ref())?;
        self.add_root_pem(&pem)
    }

    /// Whether to trust the system's roots as well as the added ones.
    pub fn with_system_roots(mut self, yes: bool) -> Self {
        self.system_roots = Some(yes);
        self
    }

    /// Turns off every check of the server's certificate. Anyone on the path can then
    /// impersonate the server; meant for tests against throwaway certificates only.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// Whether certificate checks are off.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    fn uses_system_roots(&self) -> bool {
        self.system_roots.unwrap_or(self.roots.is_empty())
    }

    /// A client context; `ip` is the server's address when there is no name to check,
    /// so the certificate must then name that address.
    pub(crate) fn client_context(&self, ip: Option<IpAddr>) -> Result<SslContextBuilder, TlsError> {
        let mut ctx = SslContextBuilder::new(SslMethod::tls()).map_err(TlsError::Context)?;
        if self.insecure {
            tracing::warn!(
                "TLS certificate verification is OFF for this connection: the server is not authenticated"
            );
            ctx.set_verify(SslVerifyMode::NONE);
            return Ok(ctx);
        }
        if self.uses_system_roots() {
            ctx.set_default_verify_paths().map_err(TlsError::Context)?;
        }
        for root in &self.roots {
            ctx.cert_store_mut()
                .add_cert(root.clone())
                .map_err(TlsError::Context)?;
        }
        if let Some(ip) = ip {
            ctx.cert_store_mut()
                .verify_param_mut()
                .set_ip(ip)
                .map_err(TlsError::Context)?;
        }
        ctx.set_verify_callback(SslVerifyMode::PEER, |ok, store| {
            if let Err(e) = store.verify_result() {
                let reason = e.error_string().to_owned();
                LAST_VERIFY_ERROR.with(|slot| *slot.borrow_mut() = Some(reason));
            }
            ok
        });
        Ok(ctx)
    }
}

thread_local! {
    /// BoringSSL calls the verify callback synchronously inside `Connection::recv`, on
    /// the worker's thread; the worker takes the reason out right after that call.
    static LAST_VERIFY_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Takes the reason of the last failed certificate check on this thread, if any.
pub(crate) fn take_verify_error() -> Option<String> {
    LAST_VERIFY_ERROR.with(|e| e.borrow_mut().take())
}

/// The name of a TLS alert (RFC 8446 §6) carried in a CRYPTO_ERROR code (RFC 9001 §4.8).
pub(crate) fn alert_name(code: u64) -> Option<&'static str> {
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    Some(match code - 0x100 {
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        109 => "missing_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "alert",
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_pem_certs(pem: &[u8], what: &'static str) -> Result<Vec<X509>, TlsError> {
    let certs = X509::stack_from_pem(pem).map_err(|source| TlsError::Parse { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}
