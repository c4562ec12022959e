//! DNS over QUIC against independent software: dnspython's DoQ client (on aioquic)
//! queries `doq-server` for A, AAAA and TXT records and a missing name, and through a
//! `doq-server` that forwards to Debian's `dnsmasq`. A peer that cannot be installed
//! is reported as SKIPPED with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::Outcome;
use super::masque::outcome;
use crate::{Result, path_str, procs, root};

/// Runs the cases (all, or those named in `only`).
pub(crate) fn run(bin: &Path, python: Option<&Path>, only: &[String]) -> Result<Vec<Outcome>> {
    let wanted = |case: &str| only.is_empty() || only.iter().any(|c| c == case);
    if !wanted("doq") && !wanted("doq-forward") {
        return Ok(Vec::new());
    }
    let dir = root().join("target/interop/doq");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    super::cases::certificates(&dir, 1)?;
    // The zone the crate's own tests use.
    let zone = root().join("crates/quic-doq/testdata/example.test.zone");
    let python = python
        .ok_or_else(|| "no Python with aioquic".to_owned())
        .and_then(dnspython);
    let py_reason = python.as_ref().err().cloned().unwrap_or_default();
    if !py_reason.is_empty() {
        println!("SKIPPED: DoQ with dnspython: {py_reason}");
    }
    let mut out = Vec::new();
    if wanted("doq") {
        let started = Instant::now();
        let r = python.as_ref().ok().map(|p| from_zone(bin, &dir, &zone, p));
        out.push(outcome(
            "doq-server",
            "dnspython",
            "doq",
            started,
            r,
            &py_reason,
        ));
    }
    if wanted("doq-forward") {
        let started = Instant::now();
        let dnsmasq = super::masque::dnsmasq();
        let (r, reason) = match (&python, &dnsmasq) {
            (Ok(p), Ok(d)) => (Some(forwarded(bin, &dir, &zone, p, d)), String::new()),
            (Err(e), _) => (None, e.clone()),
            (_, Err(e)) => {
                println!("SKIPPED: DoQ forwarding to dnsmasq: {e}");
                (None, e.clone())
            }
        };
        out.push(outcome(
            "doq-server+dnsmasq",
            "dnspython",
            "doq-forward",
            started,
            r,
            &reason,
        ));
    }
    Ok(out)
}

/// The venv's Python with dnspython (installed from PyPI when missing).
fn dnspython(python: &Path) -> std::result::Result<PathBuf, String> {
    let has = || {
        Command::new(python)
            .args(["-c", "import dns.query, dns.quic"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        let ok = Command::new(python)
            .args(["-m", "pip", "install", "--quiet", "dnspython>=2.7,<3"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !has() {
            return Err("cannot install dnspython from PyPI".into());
        }
    }
    Ok(python.to_owned())
}

/// Runs the DoQ queries `specs` (NAME/TYPE) against 127.0.0.1:`port`: for each, the
/// response code and the answers.
fn query(
    python: &Path,
    dir: &Path,
    port: u16,
    specs: &[&str],
) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
    let out = Command::new(python)
        .arg(root().join("xtask/interop/doq_query.py"))
        .arg(port.to_string())
        .arg(dir.join("ca.pem"))
        .args(specs)
        .output()
        .map_err(|e| format!("cannot run dnspython: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dnspython failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("dnspython printed no JSON ({e})"))?;
    let mut results = Vec::new();
    for r in v.as_array().ok_or("not a list")? {
        if r["id"] != 0 {
            return Err(format!("{}: an answer with ID {}", r["query"], r["id"]));
        }
        let answers = r["answers"]
            .as_array()
            .ok_or("no answers list")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        results.push((r["rcode"].as_str().unwrap_or("").to_owned(), answers));
    }
    Ok(results)
}

fn doq_server(
    bin: &Path,
    dir: &Path,
    zone: &Path,
    upstream: Option<u16>,
    tag: &str,
) -> Result<procs::Server> {
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        path_str(&dir.join("cert.pem"))?.into(),
        "--key".into(),
        path_str(&dir.join("priv.key"))?.into(),
        "--zone".into(),
        path_str(zone)?.into(),
    ];
    if let Some(port) = upstream {
        args.extend(["--upstream".into(), format!("127.0.0.1:{port}")]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    procs::Server::start_logged(
        &bin.join("doq-server"),
        &refs,
        Some(&dir.join(format!("doq-server-{tag}.log"))),
    )
}

fn from_zone(
    bin: &Path,
    dir: &Path,
    zone: &Path,
    python: &Path,
) -> std::result::Result<String, String> {
    let server = doq_server(bin, dir, zone, None, "zone")?;
    let got = query(
        python,
        dir,
        server.addr.port(),
        &[
            "www.example.test/A",
            "www.example.test/AAAA",
            "txt.example.test/TXT",
            "missing.example.test/A",
        ],
    );
    server.stop()?;
    let got = got?;
    let want: [(&str, &[&str]); 4] = [
        ("NOERROR", &["192.0.2.10"]),
        ("NOERROR", &["2001:db8::10"]),
        ("NOERROR", &["\"hello\" \"world\""]),
        ("NXDOMAIN", &[]),
    ];
    for ((rcode, answers), (want_rcode, want_answers)) in got.iter().zip(want) {
        if rcode != want_rcode || answers != want_answers {
            return Err(format!("got {got:?}"));
        }
    }
    Ok("A 192.0.2.10, AAAA 2001:db8::10, TXT \"hello\" \"world\", NXDOMAIN".into())
}

fn forwarded(
    bin: &Path,
    dir: &Path,
    zone: &Path,
    python: &Path,
    dnsmasq: &Path,
) -> std::result::Result<String, String> {
    let (mut upstream, port) =
        super::masque::start_dnsmasq(dnsmasq, dir, "example.org", "fwd.example.org,198.51.100.7")?;
    let result = (|| {
        let server = doq_server(bin, dir, zone, Some(port), "forward")?;
        let got = query(
            python,
            dir,
            server.addr.port(),
            &[
                "fwd.example.org/A",
                "gone.example.org/A",
                "www.example.test/A",
            ],
        );
        server.stop()?;
        let got = got?;
        let ok = got.len() == 3
            && got[0] == ("NOERROR".to_owned(), vec!["198.51.100.7".to_owned()])
            && got[1].0 == "NXDOMAIN"
            && got[2] == ("NOERROR".to_owned(), vec!["192.0.2.10".to_owned()]);
        if ok {
            Ok(
                "fwd.example.org A 198.51.100.7 and NXDOMAIN from dnsmasq; the zone still answers"
                    .to_owned(),
            )
        } else {
            Err(format!("got {got:?}"))
        }
    })();
    let _ = upstream.kill();
    let _ = upstream.wait();
    result
}
