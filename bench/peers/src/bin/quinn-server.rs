//! The benchmark routes on quinn 0.11 with h3 and h3-quinn: one task per connection,
//! one task per request.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use quay_bench_peers::{Args, FILL, Route, route};
use quinn::crypto::rustls::QuicServerConfig;

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(
        &args.cert,
    )?))
    .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(
        &args.key,
    )?))?
    .ok_or_else(|| anyhow::anyhow!("no private key in {}", args.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let endpoint = quinn::Endpoint::server(config, args.listen)?;
    println!("listening on {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        if args.retry && !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(mut h3) = h3::server::builder()
                .build::<_, Bytes>(h3_quinn::Connection::new(conn))
                .await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                tokio::spawn(async move {
                    if let Ok((req, stream)) = resolver.resolve_request().await {
                        let route = route(
                            req.method().as_str().as_bytes(),
                            req.uri().path().as_bytes(),
                        );
                        let _ = serve(route, stream).await;
                    }
                });
            }
        });
    }
    Ok(())
}

async fn serve(route: Route, mut stream: Stream) -> anyhow::Result<()> {
    let mut received = 0u64;
    while let Some(chunk) = stream.recv_data().await? {
        received += chunk.remaining() as u64;
    }
    let status = if route == Route::NotFound { 404 } else { 200 };
    let mut head = http::Response::builder().status(status);
    if let Route::Bytes(n) = route {
        // As quay's h3-server does: the responses carry the same fields.
        head = head.header(http::header::CONTENT_LENGTH, n);
    }
    stream.send_response(head.body(())?).await?;
    match route {
        Route::Bytes(mut n) => {
            while n > 0 {
                let len = n.min(FILL.len() as u64) as usize;
                n -= len as u64;
                stream.send_data(Bytes::from_static(&FILL[..len])).await?;
            }
        }
        Route::Upload => stream.send_data(Bytes::from(received.to_string())).await?,
        Route::NotFound => {}
    }
    stream.finish().await?;
    Ok(())
}
