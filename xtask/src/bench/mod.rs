//! `cargo xtask bench`: the field's scenarios against quay's `h3-server` and, with
//! `--vs`, the same routes on tokio-quiche, quinn and the least server that drives
//! quiche (`bench/peers/`, a workspace of its own) and on ngtcp2's `gtlsserver`
//! (Debian's, serving files), all driven by `quay-load`, with each server's CPU time
//! and memory read from `/proc`.
//!
//! The server runs on core 0 and the load generator on core 1 (`taskset`, when there
//! are two cores or more), but in the scenarios where they share every core. Each cell
//! runs `--runs` times, the servers taking turns
//! (quay, peer, quay, peer, ...) so that drift of the machine hits both alike; the
//! report gives the median with min and max, and quay/peer ratios taken per run pair.
//! Results: `target/bench/results.json`, `report.md` and SVG charts.

mod charts;
mod measure;
mod report;
mod scenarios;
mod svg;

use std::path::PathBuf;
use std::process::Command;

use crate::{Result, path_str, root};
use measure::{Run, one};
use report::{summary_line, write};
use scenarios::{Kind, scenarios};

const USAGE: &str = "\
usage: cargo xtask bench [--scenario NAME]... [--runs N] [--quick] [--vs PEER]...

  --scenario  B1 B2 B4 R1 R2 R2M R2S2 R2C1 R2C2 R3 H1 H1X H1P256 H1P384 H1R M1
              M1-10k (default: all; R2M (request spans and metrics on), R2S2, R2C1
              and R2C2 (sharded listener), H1P256 and H1P384 run quay only; R2C1
              and R2C2 let server and load share both cores; in H1X the client
              offers X25519 alone, the one group every peer shares, in H1P256 and
              H1P384 P-256 and P-384 alone). quay logs at WARN, which creates no
              request spans (the peers log nothing), except in R2M
  --runs      runs per cell (default 5; --quick: 1)
  --quick     seconds, one run each, quay only, debug build: proves the harness
              works (part of `cargo xtask test`); its figures mean nothing
  --vs        a peer server to compare with: tokio-quiche, quinn, quiche-floor
              (the least tokio server on quiche: what driving quiche costs
              without any library around it) (repeatable; built from bench/peers/
              in release mode, the first build takes minutes), or ngtcp2 (Debian's
              gtlsserver, installed with apt-get when missing, serving files from
              target/bench/htdocs)
";

struct Args {
    scenarios: Vec<String>,
    runs: usize,
    quick: bool,
    vs: Vec<String>,
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
                if !PEERS.iter().any(|(n, _)| *n == peer) && peer != NGTCP2 {
                    return Err(format!(
                        "unknown peer `{peer}`; known: tokio-quiche quinn quiche-floor {NGTCP2}"
                    ));
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

struct Server {
    name: &'static str,
    bin: PathBuf,
    /// How it is started.
    flavour: Flavour,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `h3-server`: lifts its per-source limits for the load from one address.
    Quay,
    /// A server of `bench/peers/`: the same arguments, prints `listening on ADDR`.
    Peer,
    /// ngtcp2's `gtlsserver`: files from an htdocs directory, on a port chosen here.
    Ngtcp2,
}

/// The peers `--vs` knows: name and binary in `bench/peers/`.
const PEERS: [(&str, &str); 3] = [
    ("tokio-quiche", "tq-server"),
    ("quinn", "quinn-server"),
    ("quiche-floor", "floor-server"),
];

/// The peer `--vs` installs from Debian rather than builds.
const NGTCP2: &str = "ngtcp2";

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
        flavour: Flavour::Quay,
    }];
    let mut unavailable = Vec::new();
    if args.vs.iter().any(|p| p != NGTCP2) {
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
        for peer in args.vs.iter().filter(|p| *p != NGTCP2) {
            let (name, file) = PEERS.iter().find(|(n, _)| n == peer).expect("checked");
            match &built {
                Ok(()) => servers.push(Server {
                    name,
                    bin: root().join("bench/peers/target/release").join(file),
                    flavour: Flavour::Peer,
                }),
                Err(e) => {
                    println!("  {name}: unavailable: the peers did not build: {e}");
                    unavailable.push(format!("{name}: the peers did not build ({e})"));
                }
            }
        }
    }
    if args.vs.iter().any(|p| p == NGTCP2) {
        match crate::interop::ngtcp2() {
            Ok((_, server)) => servers.push(Server {
                name: NGTCP2,
                bin: server,
                flavour: Flavour::Ngtcp2,
            }),
            Err(e) => {
                println!("  {NGTCP2}: unavailable: {e}");
                unavailable.push(format!("{NGTCP2}: {e}"));
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
    let mut failed: Vec<String> = Vec::new();
    for sc in scenarios() {
        let selected = if args.scenarios.is_empty() {
            !(args.quick && sc.name == "M1-10k")
        } else {
            args.scenarios.iter().any(|n| n == sc.name)
        };
        if !selected {
            continue;
        }
        let servers = if sc.quay_only {
            &servers[..1]
        } else {
            &servers[..]
        };
        let mut runs: Vec<(&'static str, Vec<Run>)> =
            servers.iter().map(|s| (s.name, Vec::new())).collect();
        // Servers take turns within each round: A B A B.
        for i in 0..args.runs {
            for (server, (_, out)) in servers.iter().zip(runs.iter_mut()) {
                let r = match one(&bin, &dir, &certs, server, &sc, args.quick, pin, i) {
                    Ok(r) => r,
                    // A quick run proves the harness: any failure fails it.
                    Err(e) if args.quick => return Err(e),
                    // A full run keeps going: one failed run (a peer that gave up
                    // under load, say) must not lose the hour of runs around it.
                    // It counts as missing (NaN) in the medians and its pair.
                    Err(e) => {
                        println!(
                            "  {:<7} {:<13} run {}: FAILED: {e}",
                            sc.name,
                            server.name,
                            i + 1
                        );
                        failed.push(format!(
                            "{} run {} against {}: {e}",
                            sc.name,
                            i + 1,
                            server.name
                        ));
                        Run::failed()
                    }
                };
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
    unavailable.extend(failed.iter().map(|f| format!("failed: {f}")));
    write(&dir, &cells, pin, &unavailable)?;
    println!("bench: report in {}", dir.join("report.md").display());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench: {} run(s) failed: {}",
            failed.len(),
            failed.join("; ")
        ))
    }
}
