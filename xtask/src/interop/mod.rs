//! `cargo xtask interop`: the QUIC Interop Runner's test cases, run locally.
//!
//! Each case starts a server peer and a client peer as the runner would (environment
//! `ROLE`, `TESTCASE`, `REQUESTS`, ... and the `WWW`/`DOWNLOADS`/`CERTS`/`PORT`
//! overrides), puts the [`shim`] between them in place of the network simulator,
//! then checks the downloaded files byte for byte and the header facts the case
//! requires. Results go to `target/interop/results.json` and `report.md`.

mod browser;
pub(crate) mod cases;
mod doq;
mod masque;
mod migration;
mod peers;
mod report;
pub(crate) mod shim;
mod smoke;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use peers::{install_with_apt, ngtcp2};
pub(crate) use smoke::is_bytes_pattern;
pub(crate) use smoke::smoke;
pub(crate) use smoke::venv;

use crate::{Result, procs, root};
use cases::Case;
use peers::Peer;

/// What one run of one case between two peers gave.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub server: String,
    pub client: String,
    pub case: &'static str,
    pub result: Verdict,
    pub seconds: f64,
    /// Goodput runs: Mbit/s of each run.
    pub goodput: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    Pass,
    Fail(String),
    Unsupported(String),
    Unavailable(String),
}

/// The cases of the protocols built on the core (MASQUE, DoQ), run after the matrix.
const PROTOCOL_CASES: [&str; 5] = ["masque", "masque-loss", "masque-dns", "doq", "doq-forward"];

const USAGE: &str = "\
usage: cargo xtask interop [--server NAME]... [--client NAME]... [--case NAME]...
                           [--runs N] [--quick]
       cargo xtask interop --smoke

  --server, --client  peers to run (quay, aioquic, ngtcp2; client chromium, whose
                      servers are quay and axum-h3); default: quay against every
                      available peer, both ways, quay against itself, and chromium
                      against quay and axum-h3
  --case              cases to run (default: all); see docs/interop.md. Beside the
                      matrix: masque, masque-loss, masque-dns (CONNECT-UDP with
                      ngtcp2 and dnsmasq), doq, doq-forward (dnspython, dnsmasq)
  --runs              goodput runs per pair (default 3)
  --quick             handshake, transfer, retry, http3, transferloss; quay<->quay
                      and quay<->aioquic; the browser cases with 1 MiB transfers
  --smoke             only the smoke test `cargo xtask test` runs: HTTP/3 with aioquic
                      both ways, h3-client migrating mid-download against
                      h3-server, aioquic and ngtcp2, and the MASQUE and DoQ cases
                      (debug build)
";

struct Args {
    servers: Vec<String>,
    clients: Vec<String>,
    cases: Vec<String>,
    runs: usize,
    quick: bool,
    smoke: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        servers: Vec::new(),
        clients: Vec::new(),
        cases: Vec::new(),
        runs: 3,
        quick: false,
        smoke: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--server" => a.servers.push(value()?),
            "--client" => a.clients.push(value()?),
            "--case" => a.cases.push(value()?),
            "--runs" => {
                a.runs = value()?
                    .parse()
                    .map_err(|_| format!("--runs needs a number\n\n{USAGE}"))?;
            }
            "--quick" => a.quick = true,
            "--smoke" => a.smoke = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    for c in &a.cases {
        let known = cases::all().iter().any(|k| k.name == c)
            || browser::CASES.iter().any(|(name, _, _)| name == c)
            || PROTOCOL_CASES.contains(&c.as_str());
        if !known {
            let browser: Vec<&str> = browser::CASES.iter().map(|(n, _, _)| *n).collect();
            return Err(format!(
                "unknown case `{c}`; known: {}, {}",
                cases::names(),
                browser.join(", ")
            ));
        }
    }
    Ok(a)
}

/// `cargo xtask interop ...`
pub(crate) fn run(args: &[String]) -> Result {
    let args = parse(args)?;
    let env = crate::prereqs::ensure()?;
    if args.smoke {
        crate::build_examples(&env, false, &[])?;
        return smoke(&root().join("target/debug"));
    }
    // Release binaries for measurements; the quick run reuses the test build.
    let profile = if args.quick { "debug" } else { "release" };
    crate::build_examples(
        &env,
        !args.quick,
        &["interop-endpoint", "h3-server", "axum-h3"],
    )?;
    let bin_dir = root().join("target").join(profile);
    let bin = bin_dir.join("interop-endpoint");
    let mut outcomes = matrix(&args, &bin)?;
    // The protocols on the same core, against independent software (not in the
    // quick run, which `cargo xtask test` covers with --smoke).
    let protocol_cases: Vec<String> = args
        .cases
        .iter()
        .filter(|c| PROTOCOL_CASES.contains(&c.as_str()))
        .cloned()
        .collect();
    if !args.quick && (args.cases.is_empty() || !protocol_cases.is_empty()) {
        crate::build_examples(&env, true, &["masque-proxy", "masque-client", "doq-server"])?;
        outcomes.extend(masque::run(&bin_dir, &protocol_cases)?);
        let python = smoke::venv().ok();
        outcomes.extend(doq::run(&bin_dir, python.as_deref(), &protocol_cases)?);
    }
    let browser_servers = browser_servers(&args);
    if !browser_servers.is_empty() {
        outcomes.extend(browser::run(
            &browser_servers,
            &args.cases,
            args.quick,
            &bin_dir,
        ));
    }
    // A quick run must not overwrite the last full report.
    let dir = if args.quick {
        root().join("target/interop/quick")
    } else {
        root().join("target/interop")
    };
    report::write(&dir, &outcomes)?;
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.result, Verdict::Fail(_)))
        .count();
    let passed = outcomes
        .iter()
        .filter(|o| o.result == Verdict::Pass)
        .count();
    println!(
        "interop: {passed} passed, {failed} failed, {} unsupported or unavailable; report: {}",
        outcomes.len() - passed - failed,
        dir.join("report.md").display()
    );
    if failed > 0 {
        return Err(format!("{failed} interop run(s) failed"));
    }
    Ok(())
}

/// Runs every (server, client, case) the arguments select.
fn matrix(args: &Args, quay_bin: &Path) -> Result<Vec<Outcome>> {
    let quick_cases = ["handshake", "transfer", "retry", "http3", "transferloss"];
    let selected: Vec<&Case> = cases::all()
        .iter()
        .filter(|c| {
            if args.quick {
                quick_cases.contains(&c.name)
            } else {
                args.cases.is_empty() || args.cases.iter().any(|n| n == c.name)
            }
        })
        .collect();
    let names = |given: &[String]| -> Vec<String> {
        if given.is_empty() {
            Vec::new()
        } else {
            given.to_vec()
        }
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let (servers, clients) = (names(&args.servers), names(&args.clients));
    if servers.is_empty() && clients.is_empty() {
        let others: &[&str] = if args.quick {
            &["aioquic"]
        } else {
            &["aioquic", "ngtcp2"]
        };
        pairs.push(("quay".into(), "quay".into()));
        for o in others {
            pairs.push(("quay".into(), (*o).into()));
            pairs.push(((*o).into(), "quay".into()));
        }
    } else {
        let servers = if servers.is_empty() {
            vec!["quay".to_owned()]
        } else {
            servers
        };
        let clients = if clients.is_empty() {
            vec!["quay".to_owned()]
        } else {
            clients
        };
        for s in &servers {
            for c in clients.iter().filter(|c| *c != "chromium") {
                pairs.push((s.clone(), c.clone()));
            }
        }
    }
    let mut peers = std::collections::HashMap::new();
    for (s, c) in &pairs {
        for name in [s, c] {
            if !peers.contains_key(name) {
                peers.insert(name.clone(), peers::get(name, quay_bin)?);
            }
        }
    }
    let mut out = Vec::new();
    for (s, c) in &pairs {
        let (server, client) = (&peers[s], &peers[c]);
        for case in &selected {
            let outcome = run_case(case, server, client, args);
            print_outcome(&outcome);
            out.push(outcome);
        }
    }
    Ok(out)
}

/// The servers the browser cases run against: every server given with
/// `--client chromium` (quay when none), or quay and axum-h3 by default.
fn browser_servers(args: &Args) -> Vec<String> {
    if args.servers.is_empty() && args.clients.is_empty() {
        return vec!["quay".into(), "axum-h3".into()];
    }
    if !args.clients.iter().any(|c| c == "chromium") {
        return Vec::new();
    }
    if args.servers.is_empty() {
        vec!["quay".into()]
    } else {
        args.servers.clone()
    }
}

/// One line of the console's table.
fn print_outcome(outcome: &Outcome) {
    println!(
        "  {:<8} {:<8} {:<20} {}",
        outcome.server,
        outcome.client,
        outcome.case,
        match &outcome.result {
            Verdict::Pass => match outcome.goodput.as_slice() {
                [] => format!("pass ({:.1} s)", outcome.seconds),
                g => format!("pass: {}", report::mean_stdev(g)),
            },
            Verdict::Fail(r) => format!("FAIL: {r}"),
            Verdict::Unsupported(r) => format!("unsupported: {r}"),
            Verdict::Unavailable(r) => format!("SKIPPED: {r}"),
        }
    );
}

fn run_case(case: &Case, server: &Peer, client: &Peer, args: &Args) -> Outcome {
    let mut o = Outcome {
        server: server.name.clone(),
        client: client.name.clone(),
        case: case.name,
        result: Verdict::Pass,
        seconds: 0.0,
        goodput: Vec::new(),
    };
    for p in [server, client] {
        if let Some(why) = &p.unavailable {
            o.result = Verdict::Unavailable(format!("{}: {why}", p.name));
            return o;
        }
    }
    let started = Instant::now();
    let runs = if case.name == "goodput" {
        if args.quick { 1 } else { args.runs.max(1) }
    } else {
        1
    };
    for i in 0..runs {
        match run_once(case, server, client, args.quick, i) {
            Ok(Some(mbps)) => o.goodput.push(mbps),
            Ok(None) => {}
            Err(v) => {
                o.result = v;
                break;
            }
        }
    }
    o.seconds = started.elapsed().as_secs_f64();
    o
}

/// One run; `Ok(Some(mbit/s))` for a goodput run.
fn run_once(
    case: &Case,
    server: &Peer,
    client: &Peer,
    quick: bool,
    run: usize,
) -> std::result::Result<Option<f64>, Verdict> {
    let fail = |r: String| Verdict::Fail(r);
    let dir = root()
        .join("target/interop/runs")
        .join(format!("{}_{}", server.name, client.name))
        .join(format!("{}-{run}", case.name));
    let _ = std::fs::remove_dir_all(&dir);
    let (www, downloads, certs, logs) = (
        dir.join("www"),
        dir.join("downloads"),
        dir.join("certs"),
        dir.join("logs"),
    );
    for d in [&www, &downloads, &certs, &logs] {
        std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
    }
    let cert_len = cases::certificates(&certs, case.chain).map_err(fail)?;
    let files = cases::files(case, &www, quick).map_err(fail)?;

    let ipv6 = case.name == "ipv6";
    let port = free_port(ipv6).map_err(fail)?;
    let server_ip = if ipv6 { "::1" } else { "127.0.0.1" };
    let common = |role: &str| {
        let mut env: Vec<(String, String)> = vec![
            ("ROLE".into(), role.into()),
            ("TESTCASE".into(), case.name.into()),
            ("WWW".into(), www.display().to_string()),
            ("DOWNLOADS".into(), downloads.display().to_string()),
            ("CERTS".into(), certs.display().to_string()),
            ("PORT".into(), port.to_string()),
            (
                "SSLKEYLOGFILE".into(),
                logs.join(format!("{role}-keys.log")).display().to_string(),
            ),
            (
                "QLOGDIR".into(),
                logs.join(format!("{role}-qlog")).display().to_string(),
            ),
            (
                "RUST_LOG".into(),
                std::env::var("INTEROP_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        env.push(("SERVER_IP".into(), server_ip.into()));
        if server.name == "ngtcp2" || client.name == "ngtcp2" {
            // Debian's ngtcp2 examples speak only HTTP/3: every case runs over it.
            env.push(("PROTOCOL".into(), "h3".into()));
        }
        env
    };
    let mut srv = server
        .spawn(&common("server"), &logs.join("server.log"))
        .map_err(fail)?;
    // The server has a moment to bind; an unsupported case makes it exit 127 first.
    let ready = Instant::now();
    loop {
        if let Ok(Some(status)) = srv.try_wait() {
            return Err(match status.code() {
                Some(127) => Verdict::Unsupported(format!("{} server", server.name)),
                c => fail(format!(
                    "server exited early ({c:?}); see {}",
                    logs.display()
                )),
            });
        }
        if port_bound(port, ipv6) || ready.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let server_addr = std::net::SocketAddr::new(server_ip.parse().expect("ip"), port);
    let shim = shim::Shim::start(case.shim(server_addr)).map_err(|e| fail(format!("shim: {e}")))?;
    let host = if ipv6 {
        format!("[{}]", shim.addr.ip())
    } else {
        shim.addr.ip().to_string()
    };
    let requests: Vec<String> = files
        .iter()
        .map(|(name, _)| format!("https://{host}:{}/{name}", shim.addr.port()))
        .collect();
    let mut env = common("client");
    env.push(("REQUESTS".into(), requests.join(" ")));
    let started = Instant::now();
    let mut cli = client.spawn(&env, &logs.join("client.log")).map_err(fail)?;
    let status = procs::wait_or_kill(&mut cli, case.timeout).map(|s| s.code().unwrap_or(-1));
    let elapsed = started.elapsed();
    procs::stop(&mut srv, "TERM", Duration::from_secs(2));
    let facts = shim.facts();
    drop(shim);
    // What the shim saw, for whoever investigates a failure.
    let _ = std::fs::write(logs.join("shim.txt"), format!("{facts:#?}\n"));
    let code = match status {
        None => return Err(fail(format!("timeout after {:?}", case.timeout))),
        Some(c) => c,
    };
    if code == 127 {
        return Err(Verdict::Unsupported(format!("{} client", client.name)));
    }
    if code != 0 {
        return Err(fail(format!(
            "client exited {code}; see {}",
            logs.join("client.log").display()
        )));
    }
    for (name, len) in &files {
        let got = downloads.join(name);
        let data = std::fs::read(&got).map_err(|e| fail(format!("{name}: {e}")))?;
        if data.len() as u64 != *len {
            return Err(fail(format!(
                "{name}: {} bytes, expected {len}",
                data.len()
            )));
        }
        let want = std::fs::read(www.join(name)).map_err(|e| fail(format!("{name}: {e}")))?;
        if data != want {
            return Err(fail(format!("{name}: content differs")));
        }
    }
    for check in case.checks {
        check.verify(&facts, files.len(), cert_len).map_err(fail)?;
    }
    if case.name == "goodput" {
        let bytes: u64 = files.iter().map(|(_, l)| l).sum();
        return Ok(Some(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6));
    }
    Ok(None)
}

pub(super) fn free_port(ipv6: bool) -> Result<u16> {
    let addr = if ipv6 { "[::1]:0" } else { "127.0.0.1:0" };
    let s = std::net::UdpSocket::bind(addr).map_err(|e| format!("no free port: {e}"))?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.port())
}

/// Whether something has bound UDP `port` (the server is up).
pub(super) fn port_bound(port: u16, ipv6: bool) -> bool {
    let addr = if ipv6 { "[::1]" } else { "127.0.0.1" };
    std::net::UdpSocket::bind(format!("{addr}:{port}")).is_err()
}

/// The directory of this module's scripts.
fn scripts() -> PathBuf {
    root().join("xtask/interop")
}
