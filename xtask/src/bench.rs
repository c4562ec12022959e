//! `cargo xtask bench`: the field's scenarios against quay's `h3-server` and, with
//! `--vs`, the same routes on tokio-quiche and quinn (`bench/peers/`, a workspace of
//! its own), all driven by `quay-load`, with each server's CPU time and memory read
//! from `/proc`.
//!
//! The server runs on core 0 and the load generator on core 1 (`taskset`, when there
//! are two cores or more). Each cell runs `--runs` times, the servers taking turns
//! (quay, peer, quay, peer, ...) so that drift of the machine hits both alike; the
//! report gives the median with min and max, and quay/peer ratios taken per run pair.
//! Results: `target/bench/results.json`, `report.md` and SVG charts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Result, path_str, procs, root, svg};

const USAGE: &str = "\
usage: cargo xtask bench [--scenario NAME]... [--runs N] [--quick] [--vs PEER]...

  --scenario  B1 B2 B4 R1 R2 R3 H1 H1R M1 M1-10k (default: all)
  --runs      runs per cell (default 5; --quick: 1)
  --quick     seconds, one run each, quay only, debug build: proves the harness
              works (part of `cargo xtask test`); its figures mean nothing
  --vs        a peer server to compare with: tokio-quiche, quinn (repeatable); built
              from bench/peers/ in release mode (the first build takes minutes)
";

struct Args {
    scenarios: Vec<String>,
    runs: usize,
    quick: bool,
    vs: Vec<String>,
}

/// One scenario: the load generator's arguments and what to report.
struct Scenario {
    name: &'static str,
    about: &'static str,
    /// Arguments for quay-load (full run, quick run).
    load: fn(bool) -> Vec<String>,
    /// Extra h3-server arguments.
    server: &'static [&'static str],
    /// How the result is read.
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// Goodput down (or up) and server CPU seconds per GB.
    Bulk { up: bool },
    /// Requests/s, latency and server CPU µs per request.
    Requests,
    /// Handshakes/s and server CPU ms per handshake.
    Handshakes,
    /// Server memory growth per idle connection.
    Idle,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

const MIB: u64 = 1024 * 1024;

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "B1",
            about: "bulk download on one connection",
            load: |q| {
                let n = if q { 32 * MIB } else { 1024 * MIB };
                let n = n.to_string();
                s(&["--requests", "1", "--response-size", &n])
            },
            server: &[],
            kind: Kind::Bulk { up: false },
        },
        Scenario {
            name: "B2",
            about: "bulk upload on one connection",
            load: |q| {
                let n = if q { 16 * MIB } else { 256 * MIB };
                let n = n.to_string();
                s(&[
                    "--requests",
                    "1",
                    "--request-size",
                    &n,
                    "--response-size",
                    "0",
                ])
            },
            server: &[],
            kind: Kind::Bulk { up: true },
        },
        Scenario {
            name: "B4",
            about: "100 concurrent streams x 1 MiB on one connection",
            load: |q| {
                let n = if q { "20" } else { "100" };
                s(&[
                    "--inflight",
                    n,
                    "--requests",
                    n,
                    "--response-size",
                    "1048576",
                ])
            },
            server: &[],
            kind: Kind::Bulk { up: false },
        },
        Scenario {
            name: "R1",
            about: "requests on one connection, 100 in flight, 512 B up / 4 KB down",
            load: |q| requests(q, "1", "100"),
            server: &[],
            kind: Kind::Requests,
        },
        Scenario {
            name: "R2",
            about: "requests on 32 connections x 10 in flight, 512 B up / 4 KB down",
            load: |q| requests(q, "32", "10"),
            server: &[],
            kind: Kind::Requests,
        },
        Scenario {
            name: "R3",
            about: "one request at a time (latency), 512 B up / 4 KB down",
            load: |q| requests(q, "1", "1"),
            server: &[],
            kind: Kind::Requests,
        },
        Scenario {
            name: "H1",
            about: "handshakes: fresh connection, one GET, close (no Retry)",
            load: handshakes,
            server: &[],
            kind: Kind::Handshakes,
        },
        Scenario {
            name: "H1R",
            about: "handshakes as H1, every client validated with Retry",
            load: handshakes,
            server: &["--retry"],
            kind: Kind::Handshakes,
        },
        Scenario {
            name: "M1",
            about: "server memory per idle connection (1k; 10k in full runs)",
            load: |q| {
                let n = if q { "200" } else { "1000" };
                s(&["--idle-connections", n, "--duration", "2"])
            },
            server: &[],
            kind: Kind::Idle,
        },
        Scenario {
            name: "M1-10k",
            about: "server memory per idle connection, 10k connections",
            load: |_| s(&["--idle-connections", "10000", "--duration", "2"]),
            server: &[],
            kind: Kind::Idle,
        },
    ]
}

fn requests(quick: bool, conns: &str, inflight: &str) -> Vec<String> {
    let (secs, warm) = if quick { ("1", "0.3") } else { ("10", "2") };
    s(&[
        "--connections",
        conns,
        "--inflight",
        inflight,
        "--request-size",
        "512",
        "--response-size",
        "4096",
        "--duration",
        secs,
        "--warmup",
        warm,
    ])
}

fn handshakes(quick: bool) -> Vec<String> {
    let secs = if quick { "1" } else { "10" };
    s(&[
        "--handshakes",
        "--connections",
        "8",
        "--response-size",
        "0",
        "--duration",
        secs,
    ])
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        scenarios: Vec::new(),
        runs: 5,
        quick: false,
        vs: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--scenario" => a.scenarios.push(value()?),
            "--runs" => {
                a.runs = value()?
                    .parse()
                    .map_err(|_| format!("--runs needs a number\n\n{USAGE}"))?;
            }
            "--quick" => a.quick = true,
            "--vs" => {
                let peer = value()?;
                if !PEERS.iter().any(|(n, _)| *n == peer) {
                    return Err(format!("unknown peer `{peer}`; known: tokio-quiche quinn"));
                }
                if !a.vs.contains(&peer) {
                    a.vs.push(peer);
                }
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
        }
    }
    let known: Vec<&str> = scenarios().iter().map(|s| s.name).collect();
    for s in &a.scenarios {
        if !known.contains(&s.as_str()) {
            return Err(format!(
                "unknown scenario `{s}`; known: {}",
                known.join(" ")
            ));
        }
    }
    if a.quick {
        if !a.vs.is_empty() {
            return Err("--quick measures quay alone; leave out --vs".into());
        }
        a.runs = 1;
    }
    Ok(a)
}

/// One measured run.
struct Run {
    load: String,
    server_cpu: f64,
    server_rss_growth_kib: i64,
    server_peak_kib: u64,
}

/// A server under test: quay's `h3-server` or a peer's.
struct Server {
    name: &'static str,
    bin: PathBuf,
}

/// The peers `--vs` knows: name and binary in `bench/peers/`.
const PEERS: [(&str, &str); 2] = [("tokio-quiche", "tq-server"), ("quinn", "quinn-server")];

/// All runs of one scenario, per server (quay first).
struct Cell {
    name: &'static str,
    about: &'static str,
    kind: Kind,
    runs: Vec<(&'static str, Vec<Run>)>,
}

/// `cargo xtask bench ...`
pub(crate) fn run(args: &[String]) -> Result {
    let args = parse(args)?;
    let env = crate::prereqs::ensure()?;
    // Measurements need release binaries; the quick run only proves the harness works,
    // on the debug build the test run already made.
    crate::build_examples(&env, !args.quick, &["h3-server", "quay-load"])?;
    let bin = root()
        .join("target")
        .join(if args.quick { "debug" } else { "release" });
    let mut servers = vec![Server {
        name: "quay",
        bin: bin.join("h3-server"),
    }];
    let mut unavailable = Vec::new();
    if !args.vs.is_empty() {
        let manifest = root().join("bench/peers/Cargo.toml");
        let built = crate::run(
            &env,
            "cargo",
            &[
                "build",
                "--release",
                "--locked",
                "--manifest-path",
                path_str(&manifest)?,
            ],
        );
        for peer in &args.vs {
            let (name, file) = PEERS.iter().find(|(n, _)| n == peer).expect("checked");
            match &built {
                Ok(()) => servers.push(Server {
                    name,
                    bin: root().join("bench/peers/target/release").join(file),
                }),
                Err(e) => {
                    println!("  {name}: unavailable: the peers did not build: {e}");
                    unavailable.push(format!("{name}: the peers did not build ({e})"));
                }
            }
        }
    }
    // A quick run must not overwrite the last full report.
    let dir = if args.quick {
        root().join("target/bench/quick")
    } else {
        root().join("target/bench")
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // One certificate (ECDSA P-256, signed by a fresh root) for every server, so that
    // handshakes cost the same signature everywhere.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).map_err(|e| format!("{}: {e}", certs.display()))?;
    crate::interop::cases::certificates(&certs, 1)?;
    let pin = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset").arg("-V").output().is_ok();
    let mut cells: Vec<Cell> = Vec::new();
    for sc in scenarios() {
        let selected = if args.scenarios.is_empty() {
            !(args.quick && sc.name == "M1-10k")
        } else {
            args.scenarios.iter().any(|n| n == sc.name)
        };
        if !selected {
            continue;
        }
        let mut runs: Vec<(&'static str, Vec<Run>)> =
            servers.iter().map(|s| (s.name, Vec::new())).collect();
        // Servers take turns within each round: A B A B.
        for i in 0..args.runs {
            for (server, (_, out)) in servers.iter().zip(runs.iter_mut()) {
                let r = one(&bin, &dir, &certs, server, &sc, args.quick, pin, i)?;
                println!(
                    "  {:<7} {:<13} run {}: {}",
                    sc.name,
                    server.name,
                    i + 1,
                    summary_line(sc.kind, &r)
                );
                out.push(r);
            }
        }
        cells.push(Cell {
            name: sc.name,
            about: sc.about,
            kind: sc.kind,
            runs,
        });
    }
    write(&dir, &cells, pin, &unavailable)?;
    println!("bench: report in {}", dir.join("report.md").display());
    Ok(())
}

/// Starts a server, runs the load once, stops the server.
#[allow(clippy::too_many_arguments)]
fn one(
    bin: &Path,
    dir: &Path,
    certs: &Path,
    server: &Server,
    sc: &Scenario,
    quick: bool,
    pin: bool,
    i: usize,
) -> Result<Run> {
    let mut server_args: Vec<String> = Vec::new();
    let program: PathBuf = if pin {
        server_args.extend(s(&["-c", "0"]));
        server_args.push(path_str(&server.bin)?.to_owned());
        PathBuf::from("taskset")
    } else {
        server.bin.clone()
    };
    server_args.extend(s(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        path_str(&certs.join("cert.pem"))?,
        "--key",
        path_str(&certs.join("priv.key"))?,
    ]));
    server_args.extend(s(sc.server));
    if server.name == "quay" {
        // All load comes from 127.0.0.1 and long runs send millions of requests on a
        // connection: the per-source and per-connection limits, which the peers do not
        // have, are lifted.
        server_args.extend(s(&[
            "--max-connections-per-ip",
            "1000000",
            "--max-handshakes-per-ip",
            "1000000",
            "--max-requests-per-connection",
            "0",
        ]));
    }
    let refs: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let running = procs::Server::start(&program, &refs)?;
    let pid = running.pid();
    std::thread::sleep(Duration::from_millis(200));
    let json = dir.join(format!("{}-{}-{i}.json", sc.name, server.name));
    let mut load = vec![
        "--connect".to_owned(),
        running.addr.to_string(),
        "--server-name".into(),
        "localhost".into(),
        "--ca".into(),
        path_str(&certs.join("ca.pem"))?.to_owned(),
        "--json".into(),
        path_str(&json)?.to_owned(),
    ];
    load.extend((sc.load)(quick));
    let load_bin = bin.join("quay-load");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&load_bin);
        c
    } else {
        Command::new(&load_bin)
    };
    let rss_before = rss_kib(pid, "VmRSS");
    let cpu_before = cpu_seconds(pid);
    let out = cmd
        .args(&load)
        .env("RUST_LOG", "error")
        .output()
        .map_err(|e| format!("cannot run quay-load: {e}"))?;
    // Idle runs: the connections are gone once quay-load exits, so their memory is
    // the server's peak (VmHWM) over its size before them.
    let rss_after = if matches!(sc.kind, Kind::Idle) {
        rss_kib(pid, "VmHWM")
    } else {
        rss_kib(pid, "VmRSS")
    };
    let server_cpu = cpu_seconds(pid) - cpu_before;
    let peak = rss_kib(pid, "VmHWM");
    running.stop()?;
    if !out.status.success() {
        return Err(format!(
            "{} against {}: quay-load failed: {}{}",
            sc.name,
            server.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let load = if matches!(sc.kind, Kind::Idle) {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?
    };
    Ok(Run {
        load,
        server_cpu,
        server_rss_growth_kib: rss_after as i64 - rss_before as i64,
        server_peak_kib: peak,
    })
}

/// A number field of the load generator's JSON summary; NaN when absent (a run that
/// failed, or a peer's client that does not report it).
///
/// The key is looked for at any depth, first match in document order: quay-load puts
/// its latency percentiles under `latency_us`.
fn field(json: &str, key: &str) -> f64 {
    fn find(v: &serde_json::Value, key: &str) -> Option<f64> {
        match v {
            serde_json::Value::Object(map) => map
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .or_else(|| map.values().find_map(|v| find(v, key))),
            serde_json::Value::Array(items) => items.iter().find_map(|v| find(v, key)),
            _ => None,
        }
    }
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| find(&v, key))
        .unwrap_or(f64::NAN)
}

/// The headline numbers of a run: (label, value) pairs.
fn metrics(kind: Kind, r: &Run) -> Vec<(&'static str, f64)> {
    match kind {
        Kind::Bulk { up } => {
            let bytes = field(&r.load, if up { "bytes_up" } else { "bytes_down" });
            let bps = field(
                &r.load,
                if up {
                    "goodput_up_bps"
                } else {
                    "goodput_down_bps"
                },
            );
            vec![
                ("Gbit/s", bps / 1e9),
                ("server CPU s/GB", r.server_cpu / (bytes / 1e9)),
            ]
        }
        Kind::Requests => {
            // The server's CPU covers the whole run, warm-up included.
            let n = field(&r.load, "requests_including_warmup");
            vec![
                ("req/s", field(&r.load, "requests_per_second")),
                ("p50 µs", field(&r.load, "p50")),
                ("p99 µs", field(&r.load, "p99")),
                ("server CPU µs/req", r.server_cpu * 1e6 / n),
            ]
        }
        Kind::Handshakes => {
            let n = field(&r.load, "requests_including_warmup");
            vec![
                ("handshakes/s", field(&r.load, "requests_per_second")),
                ("server CPU ms/handshake", r.server_cpu * 1e3 / n),
            ]
        }
        Kind::Idle => {
            let n: f64 = r
                .load
                .strip_prefix("ready ")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN);
            vec![
                ("connections", n),
                ("server KiB/connection", r.server_rss_growth_kib as f64 / n),
            ]
        }
    }
}

fn summary_line(kind: Kind, r: &Run) -> String {
    metrics(kind, r)
        .iter()
        .map(|(k, v)| format!("{v:.2} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

/// Metric `i` of every run.
fn column(kind: Kind, runs: &[Run], i: usize) -> Vec<f64> {
    runs.iter().map(|r| metrics(kind, r)[i].1).collect()
}

/// quay's value over the peer's, per run pair (run i of quay with run i of the peer:
/// the two ran back to back).
fn ratios(kind: Kind, quay: &[Run], peer: &[Run], i: usize) -> Vec<f64> {
    column(kind, quay, i)
        .into_iter()
        .zip(column(kind, peer, i))
        .map(|(q, p)| q / p)
        .filter(|r| r.is_finite())
        .collect()
}

fn cell_text((med, lo, hi): (f64, f64, f64), n: usize) -> String {
    if n > 1 {
        format!("{med:.2} ({lo:.2}–{hi:.2})")
    } else {
        format!("{med:.2}")
    }
}

/// Whether the load generator used (nearly) all of its core: then the rate measured
/// the client, and the server's efficiency is the figure to judge.
fn client_saturated(r: &Run) -> bool {
    let cpu = field(&r.load, "client_cpu_seconds");
    let secs = field(&r.load, "seconds");
    cpu.is_finite() && secs.is_finite() && secs > 0.0 && cpu / secs >= 0.9
}

/// The charts: file, title, unit, (scenario, metric) per category, log scale.
type Chart = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    bool,
);
const CHARTS: [Chart; 7] = [
    (
        "goodput.svg",
        "Goodput, one connection",
        "Gbit/s",
        &[("B1", "Gbit/s"), ("B2", "Gbit/s"), ("B4", "Gbit/s")],
        false,
    ),
    (
        "cpu-per-gb.svg",
        "Server CPU per GB (lower is better)",
        "CPU s/GB",
        &[
            ("B1", "server CPU s/GB"),
            ("B2", "server CPU s/GB"),
            ("B4", "server CPU s/GB"),
        ],
        false,
    ),
    (
        "requests.svg",
        "Requests per second",
        "req/s",
        &[("R1", "req/s"), ("R2", "req/s")],
        false,
    ),
    (
        "cpu-per-request.svg",
        "Server CPU per request (lower is better)",
        "CPU µs/request",
        &[
            ("R1", "server CPU µs/req"),
            ("R2", "server CPU µs/req"),
            ("R3", "server CPU µs/req"),
        ],
        false,
    ),
    (
        "latency.svg",
        "Request latency percentiles (lower is better)",
        "µs (log scale)",
        &[
            ("R1", "p50 µs"),
            ("R1", "p99 µs"),
            ("R2", "p50 µs"),
            ("R2", "p99 µs"),
            ("R3", "p50 µs"),
            ("R3", "p99 µs"),
        ],
        true,
    ),
    (
        "handshakes.svg",
        "Server CPU per handshake (lower is better)",
        "CPU ms/handshake",
        &[
            ("H1", "server CPU ms/handshake"),
            ("H1R", "server CPU ms/handshake"),
        ],
        false,
    ),
    (
        "memory.svg",
        "Server memory per idle connection (lower is better)",
        "KiB/connection",
        &[
            ("M1", "server KiB/connection"),
            ("M1-10k", "server KiB/connection"),
        ],
        false,
    ),
];

fn write(dir: &Path, cells: &[Cell], pinned: bool, unavailable: &[String]) -> Result {
    let servers: Vec<&str> = cells
        .first()
        .map(|c| c.runs.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    let versions = versions();
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "Servers: {} on core 0, driven by `quay-load` on core 1{}. Median (min–max) over \
         the runs; the servers took turns run by run, and each ratio is quay's value \
         over the peer's, per run pair (below 1: quay used less, or was faster for \
         latencies; above 1: quay's rate was higher).\n",
        servers.join(", "),
        if pinned {
            ""
        } else {
            " — not pinned: fewer than two cores or no taskset"
        }
    );
    let _ = writeln!(
        md,
        "Machine: {} × {}, Linux {}. Versions: {}.\n",
        cpus(),
        cpu_model(),
        kernel(),
        versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for u in unavailable {
        let _ = writeln!(md, "Unavailable: {u}.\n");
    }
    let charts: Vec<&Chart> = CHARTS
        .iter()
        .filter(|(_, _, _, cats, _)| cats.iter().any(|(s, _)| cells.iter().any(|c| c.name == *s)))
        .collect();
    if !charts.is_empty() {
        md.push_str("Charts: ");
        let links: Vec<String> = charts
            .iter()
            .map(|(file, title, ..)| format!("[{title}]({file})"))
            .collect();
        md.push_str(&links.join(" · "));
        md.push_str("\n\n");
    }
    for cell in cells {
        let _ = writeln!(md, "## {}: {}\n", cell.name, cell.about);
        let Some((_, first)) = cell.runs.first() else {
            continue;
        };
        let Some(r0) = first.first() else { continue };
        let labels: Vec<&str> = metrics(cell.kind, r0).iter().map(|(k, _)| *k).collect();
        let _ = writeln!(md, "| server | {} |", labels.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(labels.len()));
        for (name, runs) in &cell.runs {
            let cols: Vec<String> = (0..labels.len())
                .map(|i| cell_text(median_min_max(column(cell.kind, runs, i)), runs.len()))
                .collect();
            let _ = writeln!(md, "| {name} | {} |", cols.join(" | "));
        }
        for (name, runs) in cell.runs.iter().skip(1) {
            let cols: Vec<String> = (0..labels.len())
                .map(|i| {
                    let r = ratios(cell.kind, first, runs, i);
                    let n = r.len();
                    format!("{}×", cell_text(median_min_max(r), n))
                })
                .collect();
            let _ = writeln!(md, "| quay / {name} | {} |", cols.join(" | "));
        }
        md.push('\n');
        for (name, runs) in &cell.runs {
            let saturated = runs.iter().filter(|r| client_saturated(r)).count();
            if saturated > 0 {
                let _ = writeln!(
                    md,
                    "Note: against {name}, the client saturated its core in {saturated} of \
                     {} runs; there the rate measures the client, and server CPU per unit \
                     is the figure to judge.\n",
                    runs.len()
                );
            }
        }
    }
    for (file, title, unit, cats, log) in &charts {
        let categories: Vec<String> = cats
            .iter()
            .filter(|(s, _)| cells.iter().any(|c| c.name == *s))
            .map(|(s, m)| {
                if cats.iter().filter(|(s2, _)| s2 == s).count() > 1 {
                    format!("{s} {}", m.trim_end_matches(" µs"))
                } else {
                    (*s).to_owned()
                }
            })
            .collect();
        let series: Vec<svg::Series> = servers
            .iter()
            .map(|server| svg::Series {
                name: server,
                values: cats
                    .iter()
                    .filter(|(s, _)| cells.iter().any(|c| c.name == *s))
                    .map(|(s, m)| {
                        let cell = cells.iter().find(|c| c.name == *s)?;
                        let (_, runs) = cell.runs.iter().find(|(n, _)| n == server)?;
                        let i = metrics(cell.kind, runs.first()?)
                            .iter()
                            .position(|(k, _)| k == m)?;
                        Some(median_min_max(column(cell.kind, runs, i)))
                    })
                    .collect(),
            })
            .collect();
        let chart = svg::bars(title, unit, &categories, &series, *log);
        std::fs::write(dir.join(file), chart).map_err(|e| format!("{file}: {e}"))?;
    }
    std::fs::write(
        dir.join("results.json"),
        json(cells, pinned, &versions, unavailable),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.md"), md).map_err(|e| e.to_string())
}

fn json(
    cells: &[Cell],
    pinned: bool,
    versions: &[(String, String)],
    unavailable: &[String],
) -> String {
    use serde_json::{Map, Value, json};
    let number = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
    let scenarios: Vec<Value> = cells
        .iter()
        .map(|cell| {
            let servers: Vec<Value> = cell
                .runs
                .iter()
                .map(|(name, runs)| {
                    let runs: Vec<Value> = runs
                        .iter()
                        .map(|r| {
                            let metrics: Map<String, Value> = metrics(cell.kind, r)
                                .iter()
                                .map(|(k, v)| ((*k).to_owned(), number(*v)))
                                .collect();
                            // The load client's own JSON summary when it wrote one.
                            let load = serde_json::from_str::<Value>(r.load.trim())
                                .ok()
                                .filter(Value::is_object)
                                .unwrap_or_else(|| Value::String(r.load.clone()));
                            json!({
                                "server_cpu_seconds": number((r.server_cpu * 1e4).round() / 1e4),
                                "server_rss_growth_kib": r.server_rss_growth_kib,
                                "server_peak_kib": r.server_peak_kib,
                                "client_saturated": client_saturated(r),
                                "metrics": metrics,
                                "load": load,
                            })
                        })
                        .collect();
                    json!({"name": name, "runs": runs})
                })
                .collect();
            json!({"name": cell.name, "about": cell.about, "servers": servers})
        })
        .collect();
    let versions: Map<String, Value> = versions
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let doc = json!({
        "machine": {"cpus": cpus(), "cpu": cpu_model(), "kernel": kernel(), "pinned": pinned},
        "versions": versions,
        "unavailable": unavailable,
        "scenarios": scenarios,
    });
    let mut text =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Versions of what was measured: from the lockfiles and rustc.
fn versions() -> Vec<(String, String)> {
    let mut out = vec![("quay".to_owned(), env!("CARGO_PKG_VERSION").to_owned())];
    let lock = |file: &Path, name: &str| -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        let pat = format!("name = \"{name}\"\nversion = \"");
        let at = text.find(&pat)? + pat.len();
        Some(text[at..].split('"').next()?.to_owned())
    };
    let main = root().join("Cargo.lock");
    let peers = root().join("bench/peers/Cargo.lock");
    for (file, name) in [
        (&main, "quiche"),
        (&main, "tokio"),
        (&peers, "tokio-quiche"),
        (&peers, "quinn"),
        (&peers, "h3"),
        (&peers, "h3-quinn"),
    ] {
        if let Some(v) = lock(file, name) {
            out.push((name.to_owned(), v));
        }
    }
    if let Ok(o) = Command::new("rustc").arg("-V").output() {
        let v = String::from_utf8_lossy(&o.stdout);
        if let Some(v) = v.split_whitespace().nth(1) {
            out.push(("rustc".to_owned(), v.to_owned()));
        }
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// User + system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A memory field (`VmRSS`, `VmHWM`) of process `pid`, in KiB.
fn rss_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_found_at_any_depth_and_missing_ones_are_nan() {
        let json = r#"{"requests": 7, "latency_us": {"p50": 15871, "p99": 27039.5}}"#;
        assert_eq!(super::field(json, "requests"), 7.0);
        assert_eq!(super::field(json, "p50"), 15871.0);
        assert_eq!(super::field(json, "p99"), 27039.5);
        assert!(super::field(json, "p999").is_nan());
        assert!(super::field("not json", "p50").is_nan());
    }
}
