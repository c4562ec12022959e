//! TLS identities and trust for listeners and clients.
//!
//! quiche runs TLS 1.3 through BoringSSL; this module builds the BoringSSL context that
//! quiche is given, so certificates can come from files or memory, PEM or DER.

use std::cell::RefCell;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use boring::error::ErrorStack;
use boring::pkey::{PKey, Private};
use boring::ssl::{
    NameType, SelectCertError, SslContextBuilder, SslInfoCallbackMode, SslInfoCallbackValue,
    SslMethod, SslRef, SslVerifyMode,
};
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
    #[cfg(feature = "self-signed")]
    #[error("failed to generate a self-signed certificate")]
    SelfSigned(#[source] rcgen::Error),
    /// BoringSSL refused the configuration.
    #[error("failed to set up the TLS context")]
    Context(#[source] boring::error::ErrorStack),
    /// quiche refused the configuration.
    #[error("failed to set up the QUIC configuration")]
    Quic(#[source] quiche::Error),
}

/// A server's TLS configuration: its identity (a certificate chain, leaf first, and
/// its private key), optionally more identities chosen by the server name the client
/// asks for (SNI), and optionally client certificates required or accepted (mutual
/// TLS).
///
/// ```
/// use quic_io::TlsConfig;
///
/// # fn main() -> Result<(), quic_io::TlsError> {
/// let a = TlsConfig::self_signed(&["a.example"])?.config;
/// let b = TlsConfig::self_signed(&["b.example", "*.b.example"])?.config;
/// // `a` for every name but b.example and its subdomains.
/// let tls = a.with_server_name("b.example", b.clone()).with_server_name("*.b.example", b);
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    identity: Identity,
    /// Identities by server name: exact names (lowercase), and wildcards
    /// (`*.example.com`) that match one label.
    names: Vec<(String, Identity)>,
    client_auth: Option<ClientAuth>,
}

/// One certificate chain (leaf first) and its key.
#[derive(Clone)]
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("chain_len", &self.identity.chain.len())
            .field(
                "server_names",
                &self
                    .names
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("client_auth", &self.client_auth)
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
    /// Feature `self-signed` (default).
    #[cfg(feature = "self-signed")]
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
        Ok(Self {
            identity: Identity { chain, key },
            names: Vec::new(),
            client_auth: None,
        })
    }

    /// Serves `identity`'s certificate chain and key to clients that ask for
    /// `name` (SNI); this configuration's own identity stays the default, for every
    /// other name and for clients that send none. `name` is a DNS name, matched
    /// without regard to case, or a wildcard `*.example.com` that matches one label;
    /// an exact name wins over a wildcard, and the first entry added wins among
    /// equals. Only `identity`'s certificate and key are used.
    pub fn with_server_name(mut self, name: &str, identity: TlsConfig) -> Self {
        self.names.push((
            name.trim_end_matches('.').to_ascii_lowercase(),
            identity.identity,
        ));
        self
    }

    /// Asks clients for a certificate and verifies it against `auth`'s roots (mutual
    /// TLS). The verified chain reaches the application in
    /// [`HandshakeInfo::peer_certificates`](quic_app::HandshakeInfo::peer_certificates).
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = Some(auth);
        self
    }

    /// The default certificate's subject, one line (`CN=example.com, O=...`).
    pub fn subject(&self) -> String {
        name_line(self.identity.chain[0].subject_name())
    }

    /// When the default certificate expires, as BoringSSL prints it
    /// (`Dec  2 03:47:33 2027 GMT`).
    pub fn not_after(&self) -> String {
        self.identity.chain[0].not_after().to_string()
    }

    /// A server context holding this configuration.
    pub(crate) fn server_context(&self) -> Result<SslContextBuilder, TlsError> {
        let mut ctx = SslContextBuilder::new(SslMethod::tls()).map_err(TlsError::Context)?;
        ctx.set_info_callback(note_cipher);
        let default = &self.identity;
        ctx.set_certificate(&default.chain[0])
            .map_err(TlsError::Context)?;
        ctx.set_private_key(&default.key)
            .map_err(TlsError::Context)?;
        ctx.check_private_key().map_err(TlsError::KeyMismatch)?;
        if self.names.is_empty() {
            for extra in &default.chain[1..] {
                ctx.add_extra_chain_cert(extra.clone())
                    .map_err(TlsError::Context)?;
            }
        } else {
            // The context holds the default leaf only; each handshake gets its chain
            // (default or by name) when its ClientHello is read.
            let default = default.clone();
            let names = self.names.clone();
            ctx.set_select_certificate_callback(move |mut hello| {
                let chosen = hello
                    .servername(NameType::HOST_NAME)
                    .and_then(|name| pick_identity(&names, name))
                    .unwrap_or(&default);
                install_identity(hello.ssl_mut(), chosen).map_err(|_| SelectCertError::ERROR)
            });
        }
        if let Some(auth) = &self.client_auth {
            let mut mode = SslVerifyMode::PEER;
            if auth.required {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
            }
            for root in &auth.roots {
                ctx.cert_store_mut()
                    .add_cert(root.clone())
                    .map_err(TlsError::Context)?;
                ctx.add_client_ca(root).map_err(TlsError::Context)?;
            }
            ctx.set_verify_callback(mode, record_verify_error);
        }
        Ok(ctx)
    }
}

/// The identity for `name`: an exact entry first, then a wildcard one label up.
fn pick_identity<'a>(names: &'a [(String, Identity)], name: &str) -> Option<&'a Identity> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some((_, id)) = names.iter().find(|(n, _)| *n == name) {
        return Some(id);
    }
    let (_, parent) = name.split_once('.')?;
    names
        .iter()
        .find(|(n, _)| n.strip_prefix("*.") == Some(parent))
        .map(|(_, id)| id)
}

/// Puts `identity` on one handshake: leaf, key, then the rest of the chain.
fn install_identity(ssl: &mut SslRef, identity: &Identity) -> Result<(), ErrorStack> {
    ssl.set_certificate(&identity.chain[0])?;
    ssl.set_private_key(&identity.key)?;
    for extra in &identity.chain[1..] {
        ssl.add_chain_cert(extra)?;
    }
    Ok(())
}

/// An X.509 name on one line: `CN=example.com, O=Example`.
fn name_line(name: &boring::x509::X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e
                .data()
                .as_utf8()
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Client certificates a server asks for (mutual TLS), verified against given roots.
#[derive(Clone)]
pub struct ClientAuth {
    roots: Vec<X509>,
    required: bool,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("roots", &self.roots.len())
            .field("required", &self.required)
            .finish()
    }
}

impl ClientAuth {
    /// Requires a client certificate that chains to one of the CA certificates in
    /// this PEM text; a client without one, or with another, fails the handshake
    /// (alert `certificate_required` or `unknown_ca`).
    pub fn from_pem(roots: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            roots: parse_pem_certs(roots, "client CA certificate")?,
            required: true,
        })
    }

    /// As [`from_pem`](Self::from_pem), from a file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        Self::from_pem(&read(path.as_ref())?)
    }

    /// Lets clients without a certificate in; one that presents a certificate must
    /// still present a valid one.
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

/// Keeps the reason a peer's certificate failed verification, for the worker.
fn record_verify_error(ok: bool, store: &mut boring::x509::X509StoreContextRef) -> bool {
    if let Err(e) = store.verify_result() {
        let reason = e.error_string().to_owned();
        LAST_VERIFY_ERROR.with(|slot| *slot.borrow_mut() = Some(reason));
    }
    ok
}

/// A generated self-signed identity, with its PEM text so clients can trust it.
#[cfg(feature = "self-signed")]
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
    identity: Option<TlsConfig>,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("roots", &self.roots.len())
            .field("system_roots", &self.uses_system_roots())
            .field("insecure", &self.insecure)
            .field("identity", &self.identity.is_some())
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

    /// Presents this certificate chain and key when a server asks for one (mutual
    /// TLS). Only its default identity is used.
    pub fn with_identity(mut self, identity: TlsConfig) -> Self {
        self.identity = Some(identity);
        self
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
        ctx.set_info_callback(note_cipher);
        if let Some(identity) = &self.identity {
            let identity = &identity.identity;
            ctx.set_certificate(&identity.chain[0])
                .map_err(TlsError::Context)?;
            for extra in &identity.chain[1..] {
                ctx.add_extra_chain_cert(extra.clone())
                    .map_err(TlsError::Context)?;
            }
            ctx.set_private_key(&identity.key)
                .map_err(TlsError::Context)?;
        }
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
        ctx.set_verify_callback(SslVerifyMode::PEER, record_verify_error);
        Ok(ctx)
    }
}

thread_local! {
    /// BoringSSL calls the verify callback synchronously inside `Connection::recv`, on
    /// the worker's thread; the worker takes the reason out right after that call.
    static LAST_VERIFY_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

thread_local! {
    /// The cipher suite of the last handshake completed on this thread: BoringSSL
    /// calls the info callback inside `Connection::recv` (or `send`), and the worker
    /// takes it out right after.
    static LAST_CIPHER: std::cell::Cell<Option<Negotiated>> = const { std::cell::Cell::new(None) };
}

/// What a completed handshake settled on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    /// The cipher suite's standard name.
    pub(crate) cipher: Option<&'static str>,
    /// The key-exchange group's name.
    pub(crate) group: Option<&'static str>,
}

/// Notes the cipher suite and key-exchange group of a handshake that just completed.
fn note_cipher(ssl: &SslRef, mode: SslInfoCallbackMode, _: SslInfoCallbackValue) {
    if mode == SslInfoCallbackMode::HANDSHAKE_DONE {
        LAST_CIPHER.set(Some(Negotiated {
            cipher: ssl.current_cipher().and_then(|c| c.standard_name()),
            group: ssl.curve_name(),
        }));
    }
}

/// Takes what the last handshake completed on this thread negotiated, if any.
pub(crate) fn take_cipher() -> Option<Negotiated> {
    LAST_CIPHER.take()
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
