//! Client connection migration against three servers: quay's `h3-server`, aioquic
//! and ngtcp2's `gtlsserver`. `h3-client --migrate-after` moves its connection to a
//! fresh local port in the middle of a download; the body must arrive byte for byte
//! and the client must report the move. A server that cannot be installed is
//! reported as `SKIPPED` with the reason.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Result, path_str, procs, root};

/// Bytes downloaded; the move happens after the first `MIGRATE_AFTER`.
const SIZE: u64 = 4_000_000;
const MIGRATE_AFTER: u64 = 300_000;

/// The outcome of one server: `None` when it was skipped.
type Check = (&'static str, Option<std::result::Result<(), String>>);

/// Runs the three checks; prints one line each.
pub(super) fn run(bin: &Path, python: Option<&Path>) -> Result<(usize, Vec<String>)> {
    let dir = root().join("target/interop/migration");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let checks: [Check; 3] = [
        ("h3-server", Some(quay(bin, &dir))),
        ("aioquic", python.map(|p| aioquic(bin, p, &dir))),
        ("ngtcp2 gtlsserver", ngtcp2(bin, &dir)),
    ];
    let (mut passed, mut failed) = (0, Vec::new());
    for (server, outcome) in checks {
        let name = format!("quay h3-client -> {server}, migrating mid-download");
        match outcome {
            None => println!("  SKIPPED: {name}: the server is not available"),
            Some(Ok(())) => {
                println!("  ok   {name}");
                passed += 1;
            }
            Some(Err(e)) => {
                println!("  FAIL {name}: {e}");
                failed.push(name);
            }
        }
    }
    Ok((passed, failed))
}

/// `h3-client --migrate-after` fetching `url` into `out`, checked: exit 0, the move
/// reported, and `expect` true of the body.
fn fetch(
    bin: &Path,
    ca: &Path,
    url: &str,
    out: &Path,
    expect: impl Fn(&[u8]) -> bool,
) -> std::result::Result<(), String> {
    let run = Command::new(bin.join("h3-client"))
        .args(["--ca", path_str(ca)?, "-o", path_str(out)?])
        .args(["--migrate-after", &MIGRATE_AFTER.to_string(), url])
        .output()
        .map_err(|e| format!("cannot run h3-client: {e}"))?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        return Err(format!(
            "h3-client exited {}: {}",
            run.status,
            stderr.trim()
        ));
    }
    if !stderr.contains("* migrated to ") {
        return Err(format!("no migration reported: {}", stderr.trim()));
    }
    let body = std::fs::read(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if !expect(&body) {
        return Err(format!("the body differs ({} bytes)", body.len()));
    }
    Ok(())
}

/// `/bytes/SIZE`, byte for byte.
fn is_pattern(body: &[u8]) -> bool {
    super::smoke::is_bytes_pattern(body, SIZE)
}

fn quay(bin: &Path, dir: &Path) -> std::result::Result<(), String> {
    let cert = dir.join("quay-cert.pem");
    let server = procs::Server::start(
        &bin.join("h3-server"),
        &["--listen", "127.0.0.1:0", "--write-cert", path_str(&cert)?],
    )?;
    let url = format!("https://localhost:{}/bytes/{SIZE}", server.addr.port());
    let result = fetch(bin, &cert, &url, &dir.join("from-quay.bin"), is_pattern);
    server.stop()?;
    result
}

fn aioquic(bin: &Path, python: &Path, dir: &Path) -> std::result::Result<(), String> {
    let peer_dir = dir.join("aioquic");
    let server = super::smoke::aioquic_server(python, &peer_dir)?;
    let url = format!("https://localhost:{}/bytes/{SIZE}", server.addr.port());
    let result = fetch(
        bin,
        &peer_dir.join("cert.pem"),
        &url,
        &dir.join("from-aioquic.bin"),
        is_pattern,
    );
    server.stop()?;
    result
}

/// `None` when gtlsserver cannot be had.
fn ngtcp2(bin: &Path, dir: &Path) -> Option<std::result::Result<(), String>> {
    let (_, server) = match super::peers::ngtcp2() {
        Ok(found) => found,
        Err(reason) => {
            println!("  (ngtcp2: {reason})");
            return None;
        }
    };
    Some((|| {
        let certs = dir.join("ngtcp2-certs");
        let www = dir.join("ngtcp2-www");
        for d in [&certs, &www] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        super::cases::certificates(&certs, 1)?;
        let file: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        std::fs::write(www.join("file.bin"), &file).map_err(|e| e.to_string())?;
        let port = super::free_port(false)?;
        let log = dir.join("gtlsserver.log");
        let mut child = procs::spawn_logged(
            &server,
            &[
                "-q".into(),
                "-d".into(),
                path_str(&www)?.to_owned(),
                "127.0.0.1".into(),
                port.to_string(),
                path_str(&certs.join("priv.key"))?.to_owned(),
                path_str(&certs.join("cert.pem"))?.to_owned(),
            ],
            &[],
            &log,
        )?;
        let up = Instant::now() + Duration::from_secs(10);
        while !super::port_bound(port, false) && Instant::now() < up {
            std::thread::sleep(Duration::from_millis(50));
        }
        let url = format!("https://localhost:{port}/file.bin");
        let result = fetch(
            bin,
            &certs.join("ca.pem"),
            &url,
            &dir.join("from-ngtcp2.bin"),
            |body| body == file.as_slice(),
        );
        procs::stop(&mut child, "TERM", Duration::from_secs(2));
        result
    })())
}
