//! The HTTP/3 interop smoke test: quay against aioquic, an independent implementation,
//! both ways. aioquic comes from PyPI into a venv under `target/interop/`; when it
//! cannot be installed the test says `SKIPPED` with the reason, never that it passed.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, path_str, procs, root};

/// The `/bytes/` sizes fetched in each direction.
const TO_QUAY: u64 = 3_000_000;
const FROM_AIOQUIC: u64 = 1_000_000;

pub(crate) fn smoke(bin: &Path) -> Result {
    println!("\n==> interop smoke: aioquic <-> quay over HTTP/3");
    let mut passed = 0;
    let mut failed = Vec::new();
    let python = match venv() {
        Ok(p) => {
            aioquic_both_ways(bin, &p, &mut passed, &mut failed)?;
            Some(p)
        }
        Err(reason) => {
            println!("SKIPPED: interop smoke: {reason}");
            None
        }
    };
    println!("\n==> client migration mid-download: h3-server, aioquic, ngtcp2");
    let (p, f) = super::migration::run(bin, python.as_deref())?;
    passed += p;
    failed.extend(f);
    println!(
        "\n==> MASQUE (CONNECT-UDP): ngtcp2 and dnsmasq through masque-client and masque-proxy"
    );
    let mut outcomes = super::masque::run(bin, &[])?;
    println!("\n==> DNS over QUIC: dnspython against doq-server, and forwarding to dnsmasq");
    outcomes.extend(super::doq::run(bin, python.as_deref(), &[])?);
    for o in outcomes {
        match o.result {
            super::Verdict::Pass => passed += 1,
            super::Verdict::Fail(_) => {
                failed.push(format!("{} ({} -> {})", o.case, o.client, o.server));
            }
            _ => {}
        }
    }
    println!("interop: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("interop smoke failed: {}", failed.join("; ")))
    }
}

/// aioquic's client against h3-server, h3-client against aioquic's server.
fn aioquic_both_ways(
    bin: &Path,
    python: &Path,
    passed: &mut usize,
    failed: &mut Vec<String>,
) -> Result {
    let peer = root().join("xtask/interop/aioquic_peer.py");
    let dir = root().join("target/interop");

    // aioquic client -> quay h3-server.
    let cert = dir.join("quay-cert.pem");
    let server = procs::Server::start(
        &bin.join("h3-server"),
        &["--listen", "127.0.0.1:0", "--write-cert", path_str(&cert)?],
    )?;
    let url = format!("https://localhost:{}/bytes/{TO_QUAY}", server.addr.port());
    let out = Command::new(python)
        .arg(&peer)
        .args(["client", &url, "--ca", path_str(&cert)?])
        .output()
        .map_err(|e| format!("cannot run the aioquic client: {e}"))?;
    server.stop()?;
    report(
        "aioquic client -> quay h3-server, /bytes/ download with SHA-256 check",
        out.status.success(),
        &out,
        passed,
        failed,
    );

    // quay h3-client -> aioquic server.
    let peer_dir = dir.join("aioquic-server");
    let server = aioquic_server(python, &peer_dir)?;
    let download = dir.join("from-aioquic.bin");
    let url = format!(
        "https://localhost:{}/bytes/{FROM_AIOQUIC}",
        server.addr.port()
    );
    let out = Command::new(bin.join("h3-client"))
        .args([
            "--ca",
            path_str(&peer_dir.join("cert.pem"))?,
            "-o",
            path_str(&download)?,
            &url,
        ])
        .output()
        .map_err(|e| format!("cannot run h3-client: {e}"))?;
    server.stop()?;
    let body_ok = std::fs::read(&download).is_ok_and(|b| is_bytes_pattern(&b, FROM_AIOQUIC));
    report(
        "quay h3-client -> aioquic server, /bytes/ download checked byte for byte",
        out.status.success() && body_ok,
        &out,
        passed,
        failed,
    );
    Ok(())
}

/// aioquic's HTTP/3 server (`aioquic_peer.py server`) on 127.0.0.1, serving `/bytes/N`;
/// its certificate is written to `dir/cert.pem`.
pub(super) fn aioquic_server(python: &Path, dir: &Path) -> Result<procs::Server> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let peer = root().join("xtask/interop/aioquic_peer.py");
    procs::Server::start(
        python,
        &[
            path_str(&peer)?,
            "server",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            path_str(dir)?,
        ],
    )
}

/// Whether `body` is what `/bytes/LEN` serves: LEN bytes, byte i being i % 256.
pub(crate) fn is_bytes_pattern(body: &[u8], len: u64) -> bool {
    body.len() as u64 == len && body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8)
}

fn report(
    name: &str,
    ok: bool,
    out: &std::process::Output,
    passed: &mut usize,
    failed: &mut Vec<String>,
) {
    println!("  {} {name}", if ok { "ok  " } else { "FAIL" });
    if ok {
        *passed += 1;
    } else {
        println!(
            "    stdout: {}\n    stderr: {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        failed.push(name.to_owned());
    }
}

/// The venv's python with aioquic installed, creating it if needed.
pub(crate) fn venv() -> std::result::Result<PathBuf, String> {
    let dir = root().join("target/interop/venv");
    let python = dir.join("bin/python");
    let has_aioquic = |p: &Path| {
        Command::new(p)
            .args(["-c", "import aioquic"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.is_file() && has_aioquic(&python) {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if !made.success() {
        return Err("python3 -m venv failed (install python3-venv)".to_owned());
    }
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "aioquic>=1.2,<2"])
        .status()
        .map_err(|e| format!("cannot run pip ({e})"))?;
    if !installed.success() || !has_aioquic(&python) {
        return Err("cannot install aioquic from PyPI".to_owned());
    }
    Ok(python)
}
