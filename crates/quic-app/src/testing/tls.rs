use boring::pkey::PKey;
use boring::ssl::{SslContextBuilder, SslMethod, SslVerifyMode};
use boring::x509::X509;

use super::HarnessError;

/// A client and a server configuration that trust each other: a fresh self-signed
/// certificate for `localhost`, which the client verifies.
pub(super) fn configs(alpn: &[u8]) -> Result<(quiche::Config, quiche::Config), HarnessError> {
    let server_err = |e: Box<dyn std::error::Error + Send + Sync>| HarnessError::Config {
        side: "server",
        source: e,
    };
    let client_err = |e: Box<dyn std::error::Error + Send + Sync>| HarnessError::Config {
        side: "client",
        source: e,
    };
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| server_err(Box::new(e)))?;
    let cert = X509::from_der(key.cert.der()).map_err(|e| server_err(Box::new(e)))?;
    let pkey = PKey::private_key_from_der(&key.signing_key.serialize_der())
        .map_err(|e| server_err(Box::new(e)))?;

    let mut server_ctx =
        SslContextBuilder::new(SslMethod::tls()).map_err(|e| server_err(Box::new(e)))?;
    server_ctx
        .set_certificate(&cert)
        .and_then(|()| server_ctx.set_private_key(&pkey))
        .and_then(|()| server_ctx.check_private_key())
        .map_err(|e| server_err(Box::new(e)))?;
    let mut server =
        quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, server_ctx)
            .map_err(|e| server_err(Box::new(e)))?;
    server
        .set_application_protos(&[alpn])
        .map_err(|e| server_err(Box::new(e)))?;

    let mut client_ctx =
        SslContextBuilder::new(SslMethod::tls()).map_err(|e| client_err(Box::new(e)))?;
    client_ctx
        .cert_store_mut()
        .add_cert(cert)
        .map_err(|e| client_err(Box::new(e)))?;
    client_ctx.set_verify(SslVerifyMode::PEER);
    let mut client =
        quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, client_ctx)
            .map_err(|e| client_err(Box::new(e)))?;
    client
        .set_application_protos(&[alpn])
        .map_err(|e| client_err(Box::new(e)))?;
    client.verify_peer(true);
    Ok((client, server))
}
