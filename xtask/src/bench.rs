//! `cargo xtask bench`: the field's scenarios against quay's `h3-server`, driven by
//! `quay-load`, with the server's CPU time and memory read from `/proc`.
//!
//! The server runs on core 0 and the load generator on core 1 (`taskset`, when there
//! are two cores or more). Each cell runs `--runs` times; the report gives the median
//! with min and max. Results: `target/bench/results.json` and `report.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Result, path_str, procs, root};

const USAGE: &str = "\
usage: cargo xtask bench [--scenario NAME]... [--runs N] [--quick] [--vs PEER]...

  --scenario  B1 B2 B4 R1 R2 R3 H1 H1R M1 (default: all)
  --runs      runs per cell (default 5; --quick: 1)
  --quick     seconds, one run each, quay only, debug build: proves the harness
              works (part of `cargo xtask test`); its figures mean nothing
  --vs        peers to compare with (tokio-quiche, quinn): not built yet, reported
              as unavailable
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
            "--vs" => a.vs.push(value()?),
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

/// `cargo xtask bench ...`
pub fn run(args: &[String]) -> Result {
    let args = parse(args)?;
    let env = crate::prereqs::ensure()?;
    // Measurements need release binaries; the quick run only proves the harness works,
    // on the debug build the test run already made.
    let mut build = vec![
        "build",
        "--locked",
        "-p",
        "quay-examples",
        "--bin",
        "h3-server",
        "--bin",
        "quay-load",
    ];
    if !args.quick {
        build.push("--release");
    }
    crate::run(&env, "cargo", &build)?;
    let bin = root()
        .join("target")
        .join(if args.quick { "debug" } else { "release" });
    // A quick run must not overwrite the last full report.
    let dir = if args.quick {
        root().join("target/bench/quick")
    } else {
        root().join("target/bench")
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pin = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
        && Command::new("taskset").arg("-V").output().is_ok();
    for peer in &args.vs {
        println!("  {peer}: unavailable (the peer servers are not built by this version)");
    }
    let mut results: Vec<(&'static str, &'static str, Kind, Vec<Run>)> = Vec::new();
    for sc in scenarios() {
        let selected = if args.scenarios.is_empty() {
            !(args.quick && sc.name == "M1-10k")
        } else {
            args.scenarios.iter().any(|n| n == sc.name)
        };
        if !selected {
            continue;
        }
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let r = one(&bin, &dir, &sc, args.quick, pin, i)?;
            println!(
                "  {:<7} run {}: {}",
                sc.name,
                i + 1,
                summary_line(sc.kind, &r)
            );
            runs.push(r);
        }
        results.push((sc.name, sc.about, sc.kind, runs));
    }
    write(&dir, &results, pin)?;
    println!("bench: report in {}", dir.join("report.md").display());
    Ok(())
}

/// Starts a server, runs the load once, stops the server.
fn one(bin: &Path, dir: &Path, sc: &Scenario, quick: bool, pin: bool, i: usize) -> Result<Run> {
    let cert = dir.join("cert.pem");
    let mut server_args: Vec<String> = Vec::new();
    let server_bin = bin.join("h3-server");
    let program: PathBuf = if pin {
        server_args.extend(s(&["-c", "0"]));
        server_args.push(path_str(&server_bin)?.to_owned());
        PathBuf::from("taskset")
    } else {
        server_bin
    };
    server_args.extend(s(&[
        "--listen",
        "127.0.0.1:0",
        "--write-cert",
        path_str(&cert)?,
    ]));
    server_args.extend(s(sc.server));
    let refs: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let server = procs::Server::start(&program, &refs)?;
    let pid = server.pid();
    std::thread::sleep(Duration::from_millis(200));
    let json = dir.join(format!("{}-{i}.json", sc.name));
    let mut load = vec![
        "--connect".to_owned(),
        server.addr.to_string(),
        "--server-name".into(),
        "localhost".into(),
        "--ca".into(),
        path_str(&cert)?.to_owned(),
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
    server.stop()?;
    if !out.status.success() {
        return Err(format!(
            "{}: quay-load failed: {}{}",
            sc.name,
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

/// A number field of the load generator's JSON (flat search; good enough for its own
/// output).
fn field(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    json.find(&pat)
        .map(|i| &json[i + pat.len()..])
        .and_then(|rest| {
            let rest = rest.trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
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
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

type Results = [(&'static str, &'static str, Kind, Vec<Run>)];

fn write(dir: &Path, results: &Results, pinned: bool) -> Result {
    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        "  \"machine\": {{\"cpus\": {}, \"pinned\": {pinned}}},",
        cpus()
    );
    json.push_str("  \"scenarios\": [\n");
    let mut md = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        md,
        "quay's `h3-server` (core 0) driven by `quay-load` (core 1){}; median (min–max) \
         over the runs.\n",
        if pinned {
            ""
        } else {
            " — not pinned: fewer than two cores or no taskset"
        }
    );
    for (si, (name, about, kind, runs)) in results.iter().enumerate() {
        let _ = writeln!(md, "## {name}: {about}\n");
        let labels: Vec<&str> = metrics(*kind, &runs[0]).iter().map(|(k, _)| *k).collect();
        let _ = writeln!(md, "| {} |", labels.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(labels.len()));
        let cells: Vec<String> = (0..labels.len())
            .map(|i| {
                let v: Vec<f64> = runs.iter().map(|r| metrics(*kind, r)[i].1).collect();
                let (med, lo, hi) = median_min_max(v);
                if runs.len() > 1 {
                    format!("{med:.2} ({lo:.2}–{hi:.2})")
                } else {
                    format!("{med:.2}")
                }
            })
            .collect();
        let _ = writeln!(md, "| {} |\n", cells.join(" | "));
        let _ = write!(
            json,
            "    {{\"name\": \"{name}\", \"about\": \"{about}\", \"runs\": ["
        );
        for (ri, r) in runs.iter().enumerate() {
            let load = if r.load.trim_start().starts_with('{') {
                r.load.clone()
            } else {
                format!("\"{}\"", r.load.replace('"', "'"))
            };
            let _ = write!(
                json,
                "{{\"server_cpu_seconds\": {:.4}, \"server_rss_growth_kib\": {}, \
                 \"server_peak_kib\": {}, \"load\": {}}}{}",
                r.server_cpu,
                r.server_rss_growth_kib,
                r.server_peak_kib,
                load,
                if ri + 1 < runs.len() { ", " } else { "" }
            );
        }
        let _ = writeln!(json, "]}}{}", if si + 1 < results.len() { "," } else { "" });
    }
    json.push_str("  ]\n}\n");
    std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.md"), md).map_err(|e| e.to_string())
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
