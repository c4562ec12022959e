//! MASQUE against independent software: ngtcp2's `gtlsclient` downloads a file from
//! ngtcp2's `gtlsserver` through `masque-client` and `masque-proxy` (QUIC inside
//! HTTP/3 datagrams), without and with loss on the outer connection, and a DNS query
//! over UDP reaches Debian's `dnsmasq` through a tunnel. A peer that cannot be
//! installed is reported as SKIPPED with the reason.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::shim::{Config, Link, Shim};
use super::{Outcome, Verdict, peers};
use crate::{Result, path_str, procs, root};

/// The file downloaded through the tunnel.
const FILE_BYTES: usize = 2_000_000;

/// Runs the cases (all, or those named in `only`).
pub(crate) fn run(bin: &Path, only: &[String]) -> Result<Vec<Outcome>> {
    let dir = root().join("target/interop/masque");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    super::cases::certificates(&dir, 1)?;
    let mut out = Vec::new();
    let wanted = |case: &str| only.is_empty() || only.iter().any(|c| c == case);
    let ngtcp2 = peers::ngtcp2();
    for (case, loss) in [("masque", 0.0), ("masque-loss", 0.05)] {
        if !wanted(case) {
            continue;
        }
        let started = Instant::now();
        let r = match &ngtcp2 {
            Ok((client, server)) => Some(ngtcp2_through(bin, &dir, client, server, loss)),
            Err(reason) => {
                println!("SKIPPED: {case} with ngtcp2: {reason}");
                None
            }
        };
        out.push(outcome(
            "gtlsserver",
            "gtlsclient",
            case,
            started,
            r,
            &ngtcp2_reason(&ngtcp2),
        ));
    }
    if wanted("masque-dns") {
        let started = Instant::now();
        let dnsmasq = dnsmasq();
        let r = match &dnsmasq {
            Ok(d) => Some(dns_through(bin, &dir, d)),
            Err(reason) => {
                println!("SKIPPED: masque-dns with dnsmasq: {reason}");
                None
            }
        };
        let reason = dnsmasq.as_ref().err().cloned().unwrap_or_default();
        out.push(outcome(
            "dnsmasq",
            "masque-client",
            "masque-dns",
            started,
            r,
            &reason,
        ));
    }
    Ok(out)
}

fn ngtcp2_reason(r: &std::result::Result<(PathBuf, PathBuf), String>) -> String {
    r.as_ref().err().cloned().unwrap_or_default()
}

/// A case's outcome, printed: a pass, a failure, or (`None`) unavailable for `reason`.
pub(super) fn outcome(
    server: &str,
    client: &str,
    case: &'static str,
    started: Instant,
    r: Option<std::result::Result<String, String>>,
    reason: &str,
) -> Outcome {
    let result = match r {
        Some(Ok(what)) => {
            println!("  pass {case} ({client} -> {server}): {what}");
            Verdict::Pass
        }
        Some(Err(e)) => {
            println!("  FAIL {case} ({client} -> {server}): {e}");
            Verdict::Fail(e)
        }
        None => Verdict::Unavailable(reason.to_owned()),
    };
    Outcome {
        server: server.to_owned(),
        client: client.to_owned(),
        case,
        result,
        seconds: started.elapsed().as_secs_f64(),
        goodput: Vec::new(),
    }
}

/// Debian's dnsmasq binary (package dnsmasq-base: no service is started).
pub(super) fn dnsmasq() -> std::result::Result<PathBuf, String> {
    let find = || {
        let p = PathBuf::from("/usr/sbin/dnsmasq");
        p.is_file().then_some(p)
    };
    peers::install_with_apt(&["dnsmasq-base"], find)
}

/// dnsmasq on 127.0.0.1 (a free port, returned), answering for `domain` alone with
/// one `host_record` (`NAME,ADDRESS`): NXDOMAIN for its other names, no upstream.
pub(super) fn start_dnsmasq(
    dnsmasq: &Path,
    dir: &Path,
    domain: &str,
    host_record: &str,
) -> Result<(Child, u16)> {
    let port = free_port()?;
    let child = procs::spawn_logged(
        dnsmasq,
        &[
            "--no-daemon".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            format!("--port={port}"),
            format!("--local=/{domain}/"),
            format!("--host-record={host_record}"),
            "--log-facility=-".into(),
        ],
        &[],
        &dir.join(format!("dnsmasq-{domain}.log")),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    Ok((child, port))
}

/// A port free on 127.0.0.1 now.
fn free_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// Kills a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// masque-proxy (loopback allowed) and masque-client tunnelling to `target`, the
/// outer connection through a shim losing `loss` of the datagrams each way.
fn tunnel(
    bin: &Path,
    dir: &Path,
    target: SocketAddr,
    loss: f64,
    tag: &str,
) -> Result<(procs::Server, Option<Shim>, procs::Server)> {
    let proxy = procs::Server::start_logged(
        &bin.join("masque-proxy"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            path_str(&dir.join("cert.pem"))?,
            "--key",
            path_str(&dir.join("priv.key"))?,
            "--allow-target",
            "127.0.0.1/32",
        ],
        Some(&dir.join(format!("proxy-{tag}.log"))),
    )?;
    let (shim, outer) = if loss > 0.0 {
        let link = Link {
            loss,
            max_burst: 3,
            ..Link::default()
        };
        let shim = Shim::start(Config {
            server: proxy.addr,
            to_server: link.clone(),
            to_client: link,
            rebind: None,
            blackhole: None,
            seed: 7,
        })
        .map_err(|e| format!("shim: {e}"))?;
        let addr = shim.addr;
        (Some(shim), addr)
    } else {
        (None, proxy.addr)
    };
    let client = procs::Server::start_logged(
        &bin.join("masque-client"),
        &[
            "--listen-udp",
            "127.0.0.1:0",
            "--proxy",
            &format!("https://127.0.0.1:{}/", outer.port()),
            "--target",
            &target.to_string(),
            "--ca",
            path_str(&dir.join("ca.pem"))?,
        ],
        Some(&dir.join(format!("client-{tag}.log"))),
    )?;
    Ok((proxy, shim, client))
}

/// gtlsclient downloads a file from gtlsserver through the tunnel; checked byte for
/// byte.
fn ngtcp2_through(
    bin: &Path,
    dir: &Path,
    gtlsclient: &Path,
    gtlsserver: &Path,
    loss: f64,
) -> std::result::Result<String, String> {
    let tag = if loss > 0.0 { "loss" } else { "clean" };
    let htdocs = dir.join("htdocs");
    std::fs::create_dir_all(&htdocs).map_err(|e| e.to_string())?;
    // Bytes no compression or pattern could fake: a simple generator's output.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let file: Vec<u8> = (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(htdocs.join("blob"), &file).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let server = procs::spawn_logged(
        gtlsserver,
        &[
            "-q".into(),
            "-d".into(),
            path_str(&htdocs)?.into(),
            "127.0.0.1".into(),
            port.to_string(),
            path_str(&dir.join("priv.key"))?.into(),
            path_str(&dir.join("cert.pem"))?.into(),
        ],
        &[],
        &dir.join(format!("gtlsserver-{tag}.log")),
    )?;
    let _server = Reaped(server);
    std::thread::sleep(Duration::from_millis(300));
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let (proxy, shim, client) = tunnel(bin, dir, target, loss, tag)?;
    let down = dir.join(format!("download-{tag}"));
    let _ = std::fs::remove_dir_all(&down);
    std::fs::create_dir_all(&down).map_err(|e| e.to_string())?;
    let mut get = procs::spawn_logged(
        gtlsclient,
        &[
            "-q".into(),
            "--exit-on-all-streams-close".into(),
            "--download".into(),
            path_str(&down)?.into(),
            "127.0.0.1".into(),
            client.addr.port().to_string(),
            format!("https://localhost:{port}/blob"),
        ],
        &[],
        &dir.join(format!("gtlsclient-{tag}.log")),
    )?;
    let status = procs::wait_or_kill(&mut get, Duration::from_secs(60));
    let facts = shim.as_ref().map(Shim::facts);
    client.stop()?;
    proxy.stop()?;
    match status {
        Some(s) if s.success() => {}
        other => {
            return Err(format!(
                "gtlsclient exited {other:?}; see {}",
                dir.display()
            ));
        }
    }
    let got = std::fs::read(down.join("blob")).map_err(|e| format!("no download: {e}"))?;
    if got != file {
        return Err(format!(
            "the download differs: {} of {FILE_BYTES} bytes",
            got.len()
        ));
    }
    let mut what = format!("{FILE_BYTES} bytes identical");
    if let Some(f) = facts {
        what.push_str(&format!(
            "; the shim dropped {} of {} datagrams to the proxy and {} of {} back",
            f.to_server.dropped, f.to_server.datagrams, f.to_client.dropped, f.to_client.datagrams
        ));
        if f.to_server.dropped + f.to_client.dropped == 0 {
            return Err("the shim dropped nothing: the loss case proved nothing".into());
        }
    }
    Ok(what)
}

/// A DNS query for www.example.test (A) over UDP, through the tunnel to dnsmasq.
fn dns_through(bin: &Path, dir: &Path, dnsmasq: &Path) -> std::result::Result<String, String> {
    let (server, port) =
        start_dnsmasq(dnsmasq, dir, "example.test", "www.example.test,192.0.2.10")?;
    let _server = Reaped(server);
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let (proxy, _shim, client) = tunnel(bin, dir, target, 0.0, "dns")?;
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let query = dns_query(0x5157, "www.example.test");
    let mut answer = None;
    let mut buf = [0u8; 1500];
    for _ in 0..10 {
        socket
            .send_to(&query, client.addr)
            .map_err(|e| e.to_string())?;
        if let Ok(n) = socket.recv(&mut buf) {
            answer = Some(buf[..n].to_vec());
            break;
        }
    }
    client.stop()?;
    proxy.stop()?;
    let answer = answer.ok_or("no DNS answer through the tunnel")?;
    // The header: our ID, a response, NOERROR, one answer; the answer's address.
    let id = u16::from_be_bytes([answer[0], answer[1]]);
    let rcode = answer[3] & 0x0f;
    let ancount = u16::from_be_bytes([answer[6], answer[7]]);
    if id != 0x5157 || answer[2] & 0x80 == 0 || rcode != 0 || ancount != 1 {
        return Err(format!(
            "a bad answer: id {id:#x}, flags {:02x}{:02x}, {ancount} answers",
            answer[2], answer[3]
        ));
    }
    if !answer.ends_with(&[192, 0, 2, 10]) {
        return Err(format!("the answer lacks 192.0.2.10: {answer:02x?}"));
    }
    Ok("www.example.test A 192.0.2.10".into())
}

/// A DNS query (RFC 1035 §4.1) for `name`'s A records, recursion desired.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
