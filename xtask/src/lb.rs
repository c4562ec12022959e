//! `cargo xtask lb`: three `h3-server`s behind the Linux kernel as a QUIC-LB load
//! balancer, in network namespaces.
//!
//! ```text
//!  client ns            load balancer ns                 server nss
//!  10.0.0.2  --veth--  10.0.0.1 | bridge 10.1.0.1  --veth--  10.1.0.11 (server ID 1)
//!                                                  --veth--  10.1.0.12 (server ID 2)
//!                                                  --veth--  10.1.0.13 (server ID 3)
//! ```
//!
//! The servers issue plaintext QUIC-LB connection IDs (config 0, a one-byte server ID,
//! 8-byte nonces). nftables rules in the load balancer, generated here from that
//! configuration, send a new flow that starts with a long-header packet (a client's
//! first Initial) to a server by a hash of its 4-tuple, and one that starts with a
//! short-header packet to the server whose ID its destination connection ID carries:
//! UDP payload byte 2 (byte 0 is the header's first byte, byte 1 the ID's first octet).
//! Conntrack keeps every later packet of a flow where its first went. Clients download
//! from all three servers byte for byte; clients that migrate to a new port mid-download
//! start a new flow with a short-header packet, which only the server-ID rule can route
//! right, and keep their connection. Each migrating download takes its client ports
//! from a range no earlier flow used: conntrack would send a reused 4-tuple to the
//! server of the flow that used it before.

use std::path::Path;
use std::process::Command;

use crate::{Result, path_str, procs, root};

const USAGE: &str = "\
usage: cargo xtask lb [--quick]

  --quick  fewer and smaller downloads (part of `cargo xtask test`); needs root, `ip`
           and nftables (installed with apt-get when missing); otherwise SKIPPED
";

/// The servers' addresses in their namespaces, by server ID (1, 2, 3).
const SERVERS: [&str; 3] = ["10.1.0.11", "10.1.0.12", "10.1.0.13"];

/// The address clients connect to.
const VIP: &str = "10.0.0.1";

/// The nftables rules for SERVERS behind VIP:443, from the QUIC-LB configuration the
/// servers use (config 0, server IDs 1..=3 of one byte, in the clear).
fn rules() -> String {
    let by_id: Vec<String> = SERVERS
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{} : {a}", i + 1))
        .collect();
    let by_hash: Vec<String> = SERVERS
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{i} : {a}"))
        .collect();
    format!(
        "table ip quaylb {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP} udp dport 443 @ih,0,1 0 counter dnat to @ih,16,8 map {{ {} }}
    ip daddr {VIP} udp dport 443 @ih,0,1 1 counter dnat to jhash ip saddr . udp sport mod {} map {{ {} }}
  }}
}}
",
        by_id.join(", "),
        SERVERS.len(),
        by_hash.join(", ")
    )
}

/// The namespaces, removed when dropped.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn build() -> std::result::Result<Self, String> {
        let net = Self {
            prefix: format!("qlb{}", std::process::id() % 100_000),
        };
        let c = net.ns("c");
        let lb = net.ns("lb");
        let mut steps: Vec<Vec<String>> = Vec::new();
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        for n in ["c", "lb", "s1", "s2", "s3"] {
            steps.push(s(&["netns", "add", &net.ns(n)]));
            steps.push(s(&["-n", &net.ns(n), "link", "set", "lo", "up"]));
        }
        steps.push(s(&[
            "link", "add", "qc0", "netns", &c, "type", "veth", "peer", "name", "qlbc", "netns", &lb,
        ]));
        steps.push(s(&["-n", &c, "addr", "add", "10.0.0.2/24", "dev", "qc0"]));
        steps.push(s(&["-n", &c, "link", "set", "qc0", "up"]));
        steps.push(s(&["-n", &lb, "addr", "add", "10.0.0.1/24", "dev", "qlbc"]));
        steps.push(s(&["-n", &lb, "link", "set", "qlbc", "up"]));
        steps.push(s(&["-n", &lb, "link", "add", "qbr", "type", "bridge"]));
        steps.push(s(&["-n", &lb, "addr", "add", "10.1.0.1/24", "dev", "qbr"]));
        steps.push(s(&["-n", &lb, "link", "set", "qbr", "up"]));
        for (i, addr) in SERVERS.iter().enumerate() {
            let sv = net.ns(&format!("s{}", i + 1));
            let (inner, outer) = (format!("qs{i}0"), format!("qlbs{i}"));
            steps.push(s(&[
                "link", "add", &inner, "netns", &sv, "type", "veth", "peer", "name", &outer,
                "netns", &lb,
            ]));
            steps.push(s(&[
                "-n",
                &sv,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]));
            steps.push(s(&["-n", &sv, "link", "set", &inner, "up"]));
            steps.push(s(&[
                "-n", &sv, "route", "add", "default", "via", "10.1.0.1",
            ]));
            steps.push(s(&["-n", &lb, "link", "set", &outer, "master", "qbr"]));
            steps.push(s(&["-n", &lb, "link", "set", &outer, "up"]));
        }
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {} failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        net.exec("lb", &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None)?;
        net.exec("lb", &["nft", "-f", "-"], Some(&rules()))?;
        Ok(net)
    }

    /// Runs `cmd` in namespace `n`, with `stdin`; its stdout.
    fn exec(
        &self,
        n: &str,
        cmd: &[&str],
        stdin: Option<&str>,
    ) -> std::result::Result<String, String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cmd.join(" ")))?;
        if let Some(text) = stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            pipe.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{} in {n} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in ["c", "lb", "s1", "s2", "s3"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !running_as_root() {
        return Some("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    let nft = crate::interop::install_with_apt(&["nftables"], || {
        Command::new("nft")
            .arg("--version")
            .output()
            .ok()
            .map(|_| ())
    });
    if let Err(reason) = nft {
        return Some(reason);
    }
    in_probe_namespace(|_| true)
        .is_none()
        .then(|| "network namespaces cannot be made here".into())
}

/// Whether this process runs as root (network namespaces, nftables and qdiscs need it).
pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes a throwaway network namespace, runs `check` with its name, and removes it:
/// `None` when no namespace can be made here, otherwise what `check` said.
pub(crate) fn in_probe_namespace(check: impl FnOnce(&str) -> bool) -> Option<bool> {
    let probe = format!("qprobe{}", std::process::id());
    let ip = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ip(&["netns", "add", &probe]) {
        return None;
    }
    let said = check(&probe);
    let _ = ip(&["netns", "del", &probe]);
    Some(said)
}

/// `cargo xtask lb ...`
pub(crate) fn run(args: &[String]) -> Result {
    let mut quick = false;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    println!("\n==> load balancer: three h3-servers behind nftables, routed by QUIC-LB server ID");
    if let Some(reason) = unavailable() {
        println!("SKIPPED: lb: {reason}");
        return Ok(());
    }
    let env = crate::prereqs::ensure()?;
    crate::build_examples(&env, false, &[])?;
    let bin = root().join("target/debug");
    let dir = root().join("target/lb");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cert, key) = crate::interop::cases::self_signed(&dir, &format!("IP:{VIP}"))?;
    let net = Net::build()?;

    let mut servers = Vec::new();
    for (i, addr) in SERVERS.iter().enumerate() {
        let ns = net.ns(&format!("s{}", i + 1));
        let metrics = format!("{addr}:9100");
        let id = format!("{:02x}", i + 1);
        servers.push(procs::Server::start_logged(
            Path::new("ip"),
            &[
                "netns",
                "exec",
                &ns,
                path_str(&bin.join("h3-server"))?,
                "--listen",
                "0.0.0.0:443",
                "--cert",
                path_str(&cert)?,
                "--key",
                path_str(&key)?,
                "--quic-lb-server-id",
                &id,
                "--quic-lb-nonce-len",
                "8",
                "--metrics-listen",
                &metrics,
            ],
            Some(&dir.join(format!("server{}.log", i + 1))),
        )?);
    }

    let (plain, size, migrating, big) = if quick {
        (40, 20_000, 4, 2_000_000)
    } else {
        (200, 200_000, 20, 8_000_000)
    };
    let mut failures = Vec::new();
    let client = |n: usize, bytes: u64, migrate: bool| -> std::result::Result<(), String> {
        let out = dir.join(format!("download-{n}.bin"));
        let url = format!("https://{VIP}/bytes/{bytes}");
        let mut cmd = vec![
            path_str(&bin.join("h3-client"))?.to_owned(),
            "--ca".into(),
            path_str(&cert)?.to_owned(),
            "--max-time".into(),
            "60".into(),
            "-o".into(),
            path_str(&out)?.to_owned(),
        ];
        if migrate {
            cmd.extend(["--migrate-after".into(), (bytes / 4).to_string()]);
        }
        cmd.push(url);
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        net.exec("c", &refs, None)?;
        let body = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let _ = std::fs::remove_file(&out);
        if crate::interop::is_bytes_pattern(&body, bytes) {
            Ok(())
        } else {
            Err(format!(
                "download {n}: {} bytes, not the pattern",
                body.len()
            ))
        }
    };
    // Conntrack keeps a flow's server for as long as its entry lives, after the flow
    // has ended too: a migrating client whose new port an earlier flow used would be
    // sent where that flow went, whatever its connection ID says. Each phase, and each
    // migrating download, takes its ports from a range of its own.
    let ports = |first: u32, last: u32| {
        net.exec(
            "c",
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv4.ip_local_port_range={first} {last}"),
            ],
            None,
        )
    };
    ports(20_000, 39_999)?;
    for n in 0..plain {
        if let Err(e) = client(n, size, false) {
            failures.push(e);
        }
    }
    let per_server = requests(&net)?;
    let spread_ok =
        per_server.iter().all(|&n| n > 0) && per_server.iter().sum::<u64>() == plain as u64;
    println!(
        "  {} {plain} downloads of {size} bytes, byte-exact, spread over the servers: {per_server:?}",
        if spread_ok && failures.is_empty() {
            "ok  "
        } else {
            "FAIL"
        }
    );
    if !spread_ok {
        failures.push(format!("requests per server {per_server:?}"));
    }
    let before = rule_counters(&net)?;
    let mut migrate_failures = 0;
    for n in 0..migrating {
        let first = 40_000 + 1_000 * n as u32;
        ports(first, first + 999)?;
        if let Err(e) = client(plain + n, big, true) {
            failures.push(e);
            migrate_failures += 1;
        }
    }
    let after = rule_counters(&net)?;
    let by_id = after.0 - before.0;
    let migrated_ok = migrate_failures == 0 && by_id >= migrating as u64;
    println!(
        "  {} {migrating} downloads of {big} bytes migrating to a new port mid-way, byte-exact; \
         new flows routed by server ID: {by_id}",
        if migrated_ok { "ok  " } else { "FAIL" }
    );
    if by_id < migrating as u64 {
        failures.push(format!("only {by_id} flows took the server-ID rule"));
    }
    for s in servers {
        s.stop()?;
    }
    drop(net);
    if failures.is_empty() {
        println!("lb: passed");
        Ok(())
    } else {
        Err(format!("lb: {}", failures.join("; ")))
    }
}

/// Requests each server has answered, from its Prometheus metrics.
fn requests(net: &Net) -> Result<Vec<u64>> {
    SERVERS
        .iter()
        .map(|addr| {
            let script = format!(
                "import urllib.request; print(urllib.request.urlopen('http://{addr}:9100/metrics', timeout=5).read().decode())"
            );
            let text = net.exec("lb", &["python3", "-c", &script], None)?;
            Ok(text
                .lines()
                .find_map(|l| l.strip_prefix("quay_http_requests_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64)
        })
        .collect()
}

/// Packets counted by the server-ID rule and the hash rule.
fn rule_counters(net: &Net) -> Result<(u64, u64)> {
    let text = net.exec(
        "lb",
        &["nft", "list", "chain", "ip", "quaylb", "prerouting"],
        None,
    )?;
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let at = l.find("counter packets ")? + "counter packets ".len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
        .collect();
    match counts[..] {
        [by_id, by_hash] => Ok((by_id, by_hash)),
        _ => Err(format!("unexpected rule listing: {text}")),
    }
}
