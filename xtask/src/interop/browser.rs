//! Chromium as a client peer: a real browser loads a page from `h3-server` (`quay`)
//! and from `axum-h3`, and the page's own JavaScript checks the protocol
//! (`nextHopProtocol`), downloads and uploads.
//!
//! - `browser-h3`, `browser-h3-ipv6`: the origin is forced onto QUIC
//!   (`--origin-to-force-quic-on`), the server's certificate accepted by its SPKI hash,
//!   `localhost` mapped to 127.0.0.1 or ::1. The page must arrive over `h3`; it then
//!   fetches `/bytes/N` (every byte checked) and posts N bytes to `/sha256` (the
//!   digest compared with one computed here), both over `h3`.
//! - `browser-altsvc` (axum-h3 only, which also serves TCP): the page loads over TCP
//!   (HTTP/2), must carry `Alt-Svc: h3=":PORT"`, and Chromium's net log must show it
//!   found the alternative and opened a QUIC session to it that the server answered.
//!   Chromium then refuses the test certificate on that path
//!   (CERTIFICATE_VERIFY_FAILED, whatever flags are given), so the page itself stays
//!   on TCP: the attempt is what is checked.
//!
//! The page reports with synchronous XMLHttpRequests and writes its verdict into the
//! DOM, which `--dump-dom` prints once the page has loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Outcome, Verdict};
use crate::{path_str, procs, root};

/// (name, letter, what it checks), for the report.
pub(super) const CASES: &[(&str, &str, &str)] = &[
    (
        "browser-h3",
        "B",
        "Chromium loads a page over h3 (127.0.0.1), downloads and uploads, bytes checked",
    ),
    (
        "browser-h3-ipv6",
        "6",
        "as browser-h3, with localhost resolved to ::1",
    ),
    (
        "browser-altsvc",
        "A",
        "a page over TCP carries Alt-Svc; Chromium's net log shows the QUIC attempt",
    ),
];

/// The servers a browser can test: the peer name and its binary.
fn server_bin(name: &str) -> Option<&'static str> {
    match name {
        "quay" => Some("h3-server"),
        "axum-h3" => Some("axum-h3"),
        _ => None,
    }
}

/// Runs every browser case against each of `servers`.
/// Runs the browser cases (those of `only`, when it names any) against each of
/// `servers`.
pub(super) fn run(
    servers: &[String],
    only: &[String],
    quick: bool,
    bin_dir: &Path,
) -> Vec<Outcome> {
    let selected: Vec<&str> = CASES
        .iter()
        .map(|(name, _, _)| *name)
        .filter(|name| only.is_empty() || only.iter().any(|o| o == name))
        .collect();
    if selected.is_empty() {
        return Vec::new();
    }
    let chromium = chromium();
    let mut out = Vec::new();
    for server in servers {
        for case in selected.iter().copied() {
            let started = Instant::now();
            let result = match (&chromium, server_bin(server)) {
                (Err(why), _) => Verdict::Unavailable(format!("chromium: {why}")),
                (_, None) => Verdict::Unsupported(format!(
                    "{server} is not a server the browser cases know (quay, axum-h3)"
                )),
                (Ok(_), Some("h3-server")) if case == "browser-altsvc" => {
                    Verdict::Unsupported("h3-server serves no TCP to carry Alt-Svc".into())
                }
                (Ok(chromium), Some(bin)) => {
                    match run_case(chromium, &bin_dir.join(bin), server, case, quick) {
                        Ok(()) => Verdict::Pass,
                        Err(why) => Verdict::Fail(why),
                    }
                }
            };
            let outcome = Outcome {
                server: server.clone(),
                client: "chromium".into(),
                case,
                result,
                seconds: started.elapsed().as_secs_f64(),
                goodput: Vec::new(),
            };
            super::print_outcome(&outcome);
            out.push(outcome);
        }
    }
    out
}

/// Debian's chromium, installed with apt-get when missing and running as root.
fn chromium() -> Result<PathBuf, String> {
    let find = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    super::peers::install_with_apt(&["chromium"], find)
}

fn run_case(
    chromium: &Path,
    bin: &Path,
    server: &str,
    case: &str,
    quick: bool,
) -> Result<(), String> {
    let dir = root()
        .join("target/interop/runs")
        .join(format!("{server}_chromium"))
        .join(case);
    let _ = std::fs::remove_dir_all(&dir);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
    let (cert, key, spki) = certificate(&dir)?;
    let size: usize = if quick { 1 << 20 } else { 16 << 20 };
    std::fs::write(www.join("browser.html"), page(size))
        .map_err(|e| format!("writing the page: {e}"))?;
    let want_digest = upload_digest(&dir, size)?;

    let ipv6 = case == "browser-h3-ipv6";
    let listen = if ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
    let log = dir.join("server.log");
    let server_proc = procs::Server::start_logged(
        bin,
        &[
            "--listen",
            listen,
            "--cert",
            path_str(&cert)?,
            "--key",
            path_str(&key)?,
            "--root",
            path_str(&www)?,
        ],
        Some(&log),
    )?;
    let port = server_proc.addr.port();
    let result = (|| {
        let host = if ipv6 { "[::1]" } else { "127.0.0.1" };
        let mut args = vec![
            format!("--ignore-certificate-errors-spki-list={spki}"),
            format!("--host-resolver-rules=MAP localhost {host}"),
        ];
        let altsvc = case == "browser-altsvc";
        let netlog = dir.join("netlog.json");
        if altsvc {
            args.push(format!("--log-net-log={}", netlog.display()));
            args.push("--net-log-capture-mode=Everything".into());
        } else {
            args.push(format!("--origin-to-force-quic-on=localhost:{port}"));
        }
        let url = format!("https://localhost:{port}/browser.html");
        let report = load(chromium, &dir, &args, &url)?;
        let field = |name: &str| json_field(&report, name);
        let proto = if altsvc { "h2" } else { "h3" };
        expect(&report, "page", field("page"), proto)?;
        expect(&report, "download", field("download"), "true")?;
        expect(&report, "download_proto", field("download_proto"), proto)?;
        expect(&report, "upload", field("upload"), &want_digest)?;
        expect(&report, "upload_proto", field("upload_proto"), proto)?;
        if altsvc {
            let want = format!("h3=\\\":{port}\\\"; ma=86400");
            expect(&report, "alt_svc", field("alt_svc"), &want)?;
            quic_attempt(&netlog, port)?;
        }
        Ok(())
    })();
    server_proc.stop()?;
    result
}

/// Loads `url` in headless Chromium; returns the page's `RESULT {...}` report.
fn load(chromium: &Path, dir: &Path, extra: &[String], url: &str) -> Result<String, String> {
    let profile = dir.join("profile");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-quic",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg("--dump-dom")
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(dir.join("chromium.log")).map_err(|e| e.to_string())?);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start chromium: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut s);
        let _ = tx.send(s);
    });
    let dom = match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(dom) => dom,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err("chromium did not finish within 90 s".into());
        }
    };
    let _ = procs::wait_or_kill(&mut child, Duration::from_secs(10));
    let _ = std::fs::write(dir.join("dom.html"), &dom);
    dom.lines()
        .find_map(|l| {
            let at = l.find("RESULT {")?;
            let rest = &l[at + "RESULT ".len()..];
            rest.find('}').map(|end| rest[..=end].to_owned())
        })
        .ok_or_else(|| {
            "the page reported nothing (see dom.html and chromium.log in the run directory)"
                .to_owned()
        })
}

fn expect(report: &str, what: &str, got: Option<String>, want: &str) -> Result<(), String> {
    match got {
        Some(g) if g == want => Ok(()),
        other => Err(format!("{what}: wanted {want}, got {other:?} in {report}")),
    }
}

/// The value of `"name":` in the page's flat JSON report, unquoted.
fn json_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":");
    let rest = &json[json.find(&key)? + key.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        // Up to the closing quote, escapes kept as written.
        let mut end = 0;
        let bytes = s.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        return Some(s[..end.min(s.len())].to_owned());
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// The net log shows Chromium found `h3` at `port` through Alt-Svc and opened a QUIC
/// session to localhost:`port` that the server answered.
fn quic_attempt(netlog: &Path, port: u16) -> Result<(), String> {
    let text = std::fs::read_to_string(netlog)
        .map_err(|e| format!("no net log at {}: {e}", netlog.display()))?;
    let event_id = |name: &str| -> Result<String, String> {
        let key = format!("\"{name}\":");
        let at = text
            .find(&key)
            .ok_or_else(|| format!("the net log names no {name} event"))?;
        let digits: String = text[at + key.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Ok(digits)
    };
    let events = |name: &str| -> Result<Vec<&str>, String> {
        let id = event_id(name)?;
        let tail = format!("\"type\":{id}}}");
        Ok(text
            .lines()
            .filter(|l| l.trim_end_matches(',').ends_with(&tail))
            .collect())
    };
    let found = events("HTTP_STREAM_JOB_CONTROLLER_ALT_SVC_FOUND")?;
    let alt = format!("quic localhost:{port}");
    if !found.iter().any(|l| l.contains(&alt)) {
        return Err(format!("Chromium never found the Alt-Svc entry `{alt}`"));
    }
    let session = format!("\"port\":{port}");
    let sessions = events("QUIC_SESSION")?;
    if !sessions
        .iter()
        .any(|l| l.contains("\"host\":\"localhost\"") && l.contains(&session))
    {
        return Err(format!(
            "no QUIC session to localhost:{port} in the net log"
        ));
    }
    if events("QUIC_SESSION_PACKET_AUTHENTICATED")?.is_empty() {
        return Err("no QUIC packet from the server was authenticated".into());
    }
    Ok(())
}

/// A certificate for localhost, 127.0.0.1 and ::1, its key, and the base64 SHA-256
/// of its public key (what `--ignore-certificate-errors-spki-list` takes).
fn certificate(dir: &Path) -> Result<(PathBuf, PathBuf, String), String> {
    let (cert, key) = super::cases::self_signed(dir, "DNS:localhost,IP:127.0.0.1,IP:::1")?;
    let pipeline = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | openssl base64 -A",
        cert.display()
    );
    let spki = Command::new("sh")
        .args(["-c", &pipeline])
        .output()
        .map_err(|e| format!("sh: {e}"))?;
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_owned();
    if spki.len() != 44 {
        return Err(format!("cannot compute the SPKI hash (got {spki:?})"));
    }
    Ok((cert, key, spki))
}

/// The page's upload: `size` bytes, byte i being `i % 251`; its hex SHA-256.
fn upload_digest(dir: &Path, size: usize) -> Result<String, String> {
    let path = dir.join("upload.bin");
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, body).map_err(|e| e.to_string())?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(&path)
        .output()
        .map_err(|e| format!("openssl dgst: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|d| d.len() == 64)
        .map(str::to_owned)
        .ok_or_else(|| format!("openssl dgst printed {text:?}"))
}

/// The test page: checks run in its own script, synchronously, and the verdict is
/// written into the DOM.
fn page(size: usize) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>quay browser check</title></head>
<body><pre id="result">running</pre>
<script>
var size = {size};
function proto(url) {{
  var e = performance.getEntriesByName(new URL(url, location.href).href);
  return e.length ? e[e.length - 1].nextHopProtocol : "none";
}}
var out = {{}};
try {{
  var nav = performance.getEntriesByType("navigation")[0];
  out.page = nav ? nav.nextHopProtocol : "none";
  var get = new XMLHttpRequest();
  get.open("GET", "/bytes/" + size, false);
  get.overrideMimeType("text/plain; charset=x-user-defined");
  get.send(null);
  var text = get.responseText, ok = get.status == 200 && text.length == size;
  for (var i = 0; ok && i < size; i++) {{
    if ((text.charCodeAt(i) & 0xff) != i % 256) ok = false;
  }}
  out.download = ok;
  out.download_proto = proto("/bytes/" + size);
  out.alt_svc = get.getResponseHeader("alt-svc") || "";
  var body = new Uint8Array(size);
  for (var j = 0; j < size; j++) body[j] = j % 251;
  var post = new XMLHttpRequest();
  post.open("POST", "/sha256", false);
  post.send(body);
  out.upload = post.status == 200 ? post.responseText.trim() : "status " + post.status;
  out.upload_proto = proto("/sha256");
}} catch (e) {{
  out.error = String(e);
}}
document.getElementById("result").textContent = "RESULT " + JSON.stringify(out);
</script></body></html>
"#
    )
}
