//! A QUIC Interop Runner endpoint: both roles, configured by environment variables as
//! the runner's contract prescribes.
//!
//! ```text
//! ROLE=server TESTCASE=transfer interop-endpoint
//! ROLE=client TESTCASE=transfer REQUESTS="https://server4:443/a https://server4:443/b" interop-endpoint
//! ```
//!
//! - `ROLE`: `client` or `server`; `TESTCASE`: the case (an unknown or unsupported
//!   one exits with 127); `REQUESTS`: the client's URLs, space-separated.
//! - `SSLKEYLOGFILE`, `QLOGDIR`: TLS secrets and qlog files.
//! - Paths and port, overridable for runs outside the runner's containers: `WWW`
//!   (default `/www`), `DOWNLOADS` (`/downloads`), `CERTS` (`/certs`, holding
//!   `cert.pem` and `priv.key`), `PORT` (443).
//!
//! Every case speaks `hq-interop` (HTTP/0.9) except `http3`; `PROTOCOL=h3` (outside
//! the runner's contract) runs every case over HTTP/3, for peers that speak nothing
//! else. The server runs until SIGINT or SIGTERM; the client exits 0 when every file
//! arrived complete, 1 otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use quay::io::{ClientParams, ClientTlsConfig, QuicSettings, RetryPolicy, ServerParams, TlsConfig};
use quay_examples::hq::{self, Download, DownloadResult, HqClient, HqServer};

/// Exit code for an unsupported test case.
const UNSUPPORTED: i32 = 127;

/// Cases this endpoint takes part in as a server (the client, all but
/// [`CLIENT_UNSUPPORTED`]). quiche has no QUIC v2, no ECN and cannot use a server's
/// preferred address: those cases are unsupported, honestly.
const SERVER_CASES: &[&str] = &[
    "handshake",
    "transfer",
    "longrtt",
    "chacha20",
    "multiplexing",
    "retry",
    "resumption",
    "zerortt",
    "http3",
    "blackhole",
    "keyupdate",
    "amplificationlimit",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "ipv6",
    "rebind-port",
    "rebind-addr",
    "goodput",
    "crosstraffic",
];
/// What the client cannot do of the server's cases: offer only ChaCha20 (BoringSSL
/// has no TLS 1.3 cipher configuration) or start a key update (quiche cannot).
const CLIENT_UNSUPPORTED: &[&str] = &["chacha20", "keyupdate"];

fn env_path(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn main() {
    quay_examples::init_tracing();
    let role = std::env::var("ROLE").unwrap_or_default();
    let case = std::env::var("TESTCASE").unwrap_or_default();
    let supported = match role.as_str() {
        "server" => SERVER_CASES.contains(&case.as_str()),
        "client" => {
            SERVER_CASES.contains(&case.as_str()) && !CLIENT_UNSUPPORTED.contains(&case.as_str())
        }
        _ => {
            eprintln!("ROLE must be client or server, not {role:?}");
            std::process::exit(1);
        }
    };
    if !supported {
        eprintln!("test case {case:?} is not supported as {role}");
        std::process::exit(UNSUPPORTED);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        if role == "server" {
            server(&case).await
        } else {
            client(&case).await
        }
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Whether the case runs over HTTP/3.
fn use_h3(case: &str) -> bool {
    case == "http3" || std::env::var("PROTOCOL").is_ok_and(|p| p == "h3")
}

/// Transport settings every case shares.
fn settings(case: &str) -> QuicSettings {
    let mut s = QuicSettings::default();
    s.handshake_timeout = Duration::from_secs(60);
    // Under the loss cases' 30 % loss, ten handshake probes in a row can back the
    // PTO off to about 30 s (RFC 9002 §6.2.1: only an ACK resets it); a lost request
    // is then retransmitted only after that. The idle timeout must outlast it.
    s.idle_timeout = Duration::from_secs(60);
    s.enable_early_data = matches!(case, "zerortt");
    s.keylog_file = std::env::var_os("SSLKEYLOGFILE").map(PathBuf::from);
    s.qlog_dir = std::env::var_os("QLOGDIR").map(PathBuf::from);
    if case == "transfer" {
        // Small initial windows, so flow control has to grow them.
        s.initial_max_data = 256 * 1024;
        s.initial_max_stream_data = 64 * 1024;
    }
    s
}

async fn server(case: &str) -> anyhow::Result<()> {
    let www = env_path("WWW", "/www");
    let certs = env_path("CERTS", "/certs");
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .with_context(|| format!("PORT {p:?} is not a port"))?,
        Err(_) => 443,
    };
    if !www.is_dir() {
        bail!("WWW {} is not a directory", www.display());
    }
    let tls = TlsConfig::from_pem_files(certs.join("cert.pem"), certs.join("priv.key"))
        .with_context(|| format!("cannot load the certificate from {}", certs.display()))?;
    let addr: SocketAddr = if case == "ipv6" {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))
    };
    let settings = settings(case);
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    };
    if use_h3(case) {
        let retry = if case == "retry" {
            RetryPolicy::Always
        } else {
            RetryPolicy::Never
        };
        // As patient for the first request as the idle timeout: under the loss
        // cases a request can take that long to get through.
        let mut h3 = quay::h3::H3Settings::default();
        h3.first_request_timeout = Some(settings.idle_timeout);
        let server = quay::h3::Server::builder()
            .tls(tls)
            .settings(settings)
            .h3_settings(h3)
            .configure(move |p| p.retry = retry)
            .bind(addr)?;
        println!("listening on {}", server.local_addr());
        let root = Arc::new(Some(www));
        let serve = server.serve(move |req| {
            let root = Arc::clone(&root);
            async move { quay_examples::routes::handle(req, root.as_deref()).await }
        });
        tokio::select! {
            r = serve => r?,
            r = stop => r?,
        }
        return Ok(());
    }
    let mut params = ServerParams::new(tls, &[hq::ALPN]);
    params.settings = settings;
    params.retry = if case == "retry" {
        RetryPolicy::Always
    } else {
        RetryPolicy::Never
    };
    let mut listener = quay::io::listen_on(addr, params)?;
    println!("listening on {}", listener.local_addr());
    let root = Arc::new(www);
    let accept = async {
        while let Ok(incoming) = listener.accept().await {
            incoming.start(HqServer::new(Arc::clone(&root)));
        }
    };
    tokio::select! {
        () = accept => {}
        r = stop => r?,
    }
    Ok(())
}

/// One requested URL: where to connect, what to ask for, where to write it.
struct Request {
    host: String,
    addr: SocketAddr,
    path: String,
    output: PathBuf,
}

async fn parse_requests(downloads: &Path) -> anyhow::Result<Vec<Request>> {
    let list = std::env::var("REQUESTS").context("REQUESTS is not set")?;
    let mut out = Vec::new();
    for url in list.split_whitespace() {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let host = uri
            .host()
            .with_context(|| format!("no host in {url}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("no address for {host}"))?;
        let path = uri.path().to_owned();
        let output = hq::output_path(downloads, &path)
            .with_context(|| format!("refusing to write {path}: not a plain file path"))?;
        out.push(Request {
            host,
            addr,
            path,
            output,
        });
    }
    if out.is_empty() {
        bail!("REQUESTS has no URL");
    }
    Ok(out)
}

async fn client(case: &str) -> anyhow::Result<()> {
    let downloads = env_path("DOWNLOADS", "/downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let requests = parse_requests(&downloads).await?;
    let settings = settings(case);
    let results = match case {
        "resumption" | "zerortt" => {
            // The first file on one connection; the rest on a second one that resumes
            // the session (in 0-RTT for zerortt).
            let (first, rest) = requests.split_at(1);
            let (mut results, handle) = hq_connection(first, settings.clone(), None).await?;
            let ticket = handle
                .session()
                .context("the server sent no session ticket")?;
            if !rest.is_empty() {
                results.extend(hq_connection(rest, settings, Some(ticket)).await?.0);
            }
            results
        }
        "handshakeloss" | "handshakecorruption" => {
            // One connection per file, one after the other.
            let mut results = Vec::new();
            for r in &requests {
                let one = std::slice::from_ref(r);
                results.extend(hq_connection(one, settings.clone(), None).await?.0);
            }
            results
        }
        _ => hq_connection(&requests, settings, None).await?.0,
    };
    let failed: Vec<&DownloadResult> = results.iter().filter(|r| r.error.is_some()).collect();
    for f in &failed {
        eprintln!(
            "{}: {} after {} bytes",
            f.path,
            f.error.as_deref().unwrap_or(""),
            f.bytes
        );
    }
    if !failed.is_empty() || results.len() != requests.len() {
        bail!(
            "{} of {} downloads failed",
            requests.len() - (results.len() - failed.len()),
            requests.len()
        );
    }
    Ok(())
}

/// Fetches `requests` (all to one server) over one hq-interop connection.
async fn hq_connection(
    requests: &[Request],
    settings: QuicSettings,
    session: Option<Vec<u8>>,
) -> anyhow::Result<(Vec<DownloadResult>, quay::io::ConnectionHandle)> {
    let first = &requests[0];
    let mut params = ClientParams::new(&[hq::ALPN]);
    // Interop clients do not verify the server: the runner's certificates are made up.
    params.tls = ClientTlsConfig::insecure();
    params.settings = settings;
    params.server_name = first
        .host
        .parse::<std::net::IpAddr>()
        .is_err()
        .then(|| first.host.clone());
    params.session = session;
    let downloads = requests
        .iter()
        .map(|r| Download {
            path: r.path.clone(),
            output: r.output.clone(),
        })
        .collect();
    if use_h3(&std::env::var("TESTCASE").unwrap_or_default()) {
        return h3_connection(first, params, downloads).await;
    }
    let (app, report) = HqClient::new(downloads);
    let handle = quay::io::connect(first.addr, params, app)
        .await
        .with_context(|| format!("cannot connect to {}", first.addr))?;
    let results = report
        .await
        .context("the connection ended without a report")?;
    handle.closed().await;
    Ok((results, handle))
}

/// Fetches `downloads` over one HTTP/3 connection, all at once, then closes it.
async fn h3_connection(
    first: &Request,
    mut params: ClientParams,
    downloads: Vec<Download>,
) -> anyhow::Result<(Vec<DownloadResult>, quay::io::ConnectionHandle)> {
    params.alpn = vec![quay::h3::ALPN.to_vec()];
    let (driver, send) = quay::h3::ClientH3Driver::new(quay::h3::H3Settings::default());
    let authority = if first.host.contains(':') {
        format!("[{}]:{}", first.host, first.addr.port())
    } else {
        format!("{}:{}", first.host, first.addr.port())
    };
    // Each download is a task; the first ones are queued before the handshake, so
    // with a session and early data they leave in 0-RTT. The rest wait for room in
    // the driver's request queue (it holds 64), which the running connection empties.
    let mut tasks = Vec::new();
    for (i, d) in downloads.into_iter().enumerate() {
        let req = http::Request::get(format!("https://{authority}{}", d.path)).body(())?;
        let send = send.clone();
        let (queued, mut deferred) = if i < 16 {
            (Some(send.send_request(req).await?), None)
        } else {
            (None, Some(req))
        };
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let result: anyhow::Result<()> = async {
                let (body, response) = match queued {
                    Some(q) => q,
                    None => {
                        send.send_request(deferred.take().expect("not sent yet"))
                            .await?
                    }
                };
                body.finish().await?;
                let mut resp = response.await?;
                if !resp.status().is_success() {
                    bail!("status {}", resp.status());
                }
                if let Some(dir) = d.output.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut file = std::fs::File::create(&d.output)?;
                while let Some(chunk) = resp.body_mut().chunk().await? {
                    std::io::Write::write_all(&mut file, &chunk)?;
                    bytes += chunk.len() as u64;
                }
                Ok(())
            }
            .await;
            DownloadResult {
                path: d.path,
                bytes,
                error: result.err().map(|e| format!("{e:#}")),
            }
        }));
    }
    let handle = quay::io::connect(first.addr, params, driver)
        .await
        .with_context(|| format!("cannot connect to {}", first.addr))?;
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    // Every response is complete: close with H3_NO_ERROR.
    handle.close(0x100, "done").await;
    handle.closed().await;
    Ok((results, handle))
}
