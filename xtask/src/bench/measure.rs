//! One measured run: a server started, the load run against it, the server's CPU
//! time and memory read from `/proc`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::scenarios::{Kind, Placement, Scenario, s};
use super::{Flavour, Server};
use crate::{Result, path_str, procs};

/// One measured run.
pub(super) struct Run {
    pub(super) load: String,
    pub(super) server_cpu: f64,
    pub(super) server_rss_growth_kib: i64,
    pub(super) server_peak_kib: u64,
}

impl Run {
    /// A run that failed: every figure of it reads as missing (NaN).
    pub(super) fn failed() -> Self {
        Self {
            load: String::new(),
            server_cpu: f64::NAN,
            server_rss_growth_kib: 0,
            server_peak_kib: 0,
        }
    }
}

/// Starts a server, runs the load once, stops the server.
#[allow(clippy::too_many_arguments)]
pub(super) fn one(
    bin: &Path,
    dir: &Path,
    certs: &Path,
    server: &Server,
    sc: &Scenario,
    quick: bool,
    pin: bool,
    i: usize,
) -> Result<Run> {
    let pin = pin && sc.placement == Placement::Pinned;
    let mut server_args: Vec<String> = Vec::new();
    let program: PathBuf = if pin {
        server_args.extend(s(&["-c", "0"]));
        server_args.push(path_str(&server.bin)?.to_owned());
        PathBuf::from("taskset")
    } else {
        server.bin.clone()
    };
    let load_args = (sc.load)(quick);
    let running = if server.flavour == Flavour::Ngtcp2 {
        let htdocs = htdocs(dir, &load_args)?;
        server_args.extend(s(&["-q", "-d", path_str(&htdocs)?]));
        for arg in sc.server {
            match *arg {
                "--retry" => server_args.push("-V".into()),
                other => return Err(format!("{}: gtlsserver has no `{other}`", sc.name)),
            }
        }
        // The port is free when chosen, not necessarily when gtlsserver binds it
        // (another process may take it in between): a server that exits before
        // binding is started again on another port, a bounded number of times.
        let mut attempt = 1;
        loop {
            let addr = free_udp_port()?;
            let mut args = server_args.clone();
            args.extend([
                addr.ip().to_string(),
                addr.port().to_string(),
                path_str(&certs.join("priv.key"))?.to_owned(),
                path_str(&certs.join("cert.pem"))?.to_owned(),
            ]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            match procs::Server::start_on_udp(&program, &refs, addr) {
                Ok(running) => break running,
                Err(e) if attempt < NGTCP2_STARTS => {
                    eprintln!(
                        "  {} {}: {e}; starting it again on another port",
                        sc.name, server.name
                    );
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    } else {
        start_with_contract(server, sc, &program, server_args, certs)?
    };
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
    load.extend(load_args);
    let load_bin = bin.join("quay-load");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(&load_bin);
        c
    } else {
        Command::new(&load_bin)
    };
    let rss_before = rss_kib(pid, "VmRSS");
    let cpu_before = CpuReading::of(pid);
    let out = cmd
        .args(&load)
        .env("RUST_LOG", "error")
        // A failure goes into the report as its message, without a backtrace.
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| format!("cannot run quay-load: {e}"))?;
    // Idle runs: the connections are gone once quay-load exits, so their memory is
    // the server's peak (VmHWM) over its size before them.
    let rss_after = if matches!(sc.kind, Kind::Idle) {
        rss_kib(pid, "VmHWM")
    } else {
        rss_kib(pid, "VmRSS")
    };
    let server_cpu = CpuReading::of(pid).seconds_since(&cpu_before);
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

/// Starts `h3-server` or a server of `bench/peers/`: the same arguments, and
/// `listening on ADDR` on stdout.
fn start_with_contract(
    server: &Server,
    sc: &Scenario,
    program: &Path,
    mut server_args: Vec<String>,
    certs: &Path,
) -> Result<procs::Server> {
    server_args.extend(s(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        path_str(&certs.join("cert.pem"))?,
        "--key",
        path_str(&certs.join("priv.key"))?,
    ]));
    server_args.extend(s(sc.server));
    if server.flavour == Flavour::Quay {
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
    // The peers log nothing per request. quay logs at WARN, which leaves its request
    // spans off, except in the scenarios that measure them on (INFO, the examples'
    // default).
    let log = if server.flavour == Flavour::Quay && !sc.spans {
        "warn"
    } else {
        "info"
    };
    procs::Server::start_with_env(program, &refs, None, &[("RUST_LOG", log)])
}

/// How many times gtlsserver is started on a fresh port before a run counts as failed.
const NGTCP2_STARTS: usize = 3;

/// A UDP port on 127.0.0.1 that was free a moment ago, for a server that cannot
/// choose its own.
fn free_udp_port() -> Result<SocketAddr> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free UDP port on 127.0.0.1: {e}"))
}

/// The directory gtlsserver serves: `bytes/N` for every size the load asks for
/// (`--response-size`, and 1, which idle connections fetch), each what `h3-server`
/// would send for `/bytes/N` (byte i is i % 256). Files of the right length are kept
/// between runs.
fn htdocs(dir: &Path, load: &[String]) -> Result<PathBuf> {
    let root = dir.join("htdocs");
    let bytes = root.join("bytes");
    std::fs::create_dir_all(&bytes).map_err(|e| format!("{}: {e}", bytes.display()))?;
    let mut sizes = vec![1u64];
    if let Some(n) = load
        .iter()
        .position(|a| a == "--response-size")
        .and_then(|i| load.get(i + 1))
    {
        sizes.push(
            n.parse()
                .map_err(|_| format!("a bad --response-size {n}"))?,
        );
    }
    for size in sizes {
        let file = bytes.join(size.to_string());
        if std::fs::metadata(&file).is_ok_and(|m| m.len() == size) {
            continue;
        }
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        let block: Vec<u8> = (0..=255u8).cycle().take(1 << 16).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            out.write_all(&block[..n])
                .map_err(|e| format!("{}: {e}", file.display()))?;
            left -= n as u64;
        }
        out.flush()
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(root)
}

/// A reading of a process's CPU time (user + system), to take a later one against.
///
/// Per thread, the scheduler's own count (`/proc/<pid>/task/<tid>/schedstat`,
/// nanoseconds on a CPU) when the kernel keeps it; and always the clock ticks of
/// `/proc/<pid>/stat` (10 ms each, several per cent of a short row's reading), the
/// fallback.
struct CpuReading {
    threads: Option<HashMap<u32, u64>>,
    ticks: f64,
}

impl CpuReading {
    fn of(pid: u32) -> Self {
        Self {
            threads: thread_nanos(pid),
            ticks: stat_seconds(pid),
        }
    }

    /// Seconds on a CPU since `before`, thread by thread: a thread that started since
    /// counts whole, one that ended since counts nothing (its time after `before` is
    /// gone with it, rather than its whole count taken away).
    fn seconds_since(&self, before: &Self) -> f64 {
        match (&self.threads, &before.threads) {
            (Some(now), Some(then)) => {
                let ns: u64 = now
                    .iter()
                    .map(|(tid, ns)| ns.saturating_sub(then.get(tid).copied().unwrap_or(0)))
                    .sum();
                ns as f64 / 1e9
            }
            _ => self.ticks - before.ticks,
        }
    }
}

/// Nanoseconds each thread of `pid` has spent on a CPU, from its `schedstat`.
fn thread_nanos(pid: u32) -> Option<HashMap<u32, u64>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut threads = HashMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            // A thread gone since the listing.
            continue;
        };
        threads.insert(tid, schedstat_nanos(&text)?);
    }
    (!threads.is_empty()).then_some(threads)
}

/// The first field of a `schedstat` line: time on a CPU, in nanoseconds.
fn schedstat_nanos(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// User + system CPU seconds of `pid` from `/proc/<pid>/stat`, in clock ticks.
fn stat_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_ticks(&stat))
        .map_or(f64::NAN, |ticks| ticks / 100.0)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// before them is in parentheses and may hold spaces or parentheses itself.
fn stat_ticks(stat: &str) -> Option<f64> {
    let (_, after) = stat.rsplit_once(')')?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(ticks(11)? + ticks(12)?)
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
    use super::*;

    #[test]
    fn schedstat_gives_its_first_field() {
        assert_eq!(
            schedstat_nanos("365774046 37948416 917\n"),
            Some(365_774_046)
        );
        assert_eq!(schedstat_nanos(""), None);
        assert_eq!(schedstat_nanos("x 1 2"), None);
    }

    #[test]
    fn stat_adds_user_and_system_ticks_past_an_odd_name() {
        let line = "4242 (h3 (srv) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 1234 567 0 0 20 0 3 0";
        assert_eq!(stat_ticks(line), Some(1801.0));
        assert_eq!(stat_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn time_is_taken_thread_by_thread() {
        let reading = |threads: &[(u32, u64)], ticks| CpuReading {
            threads: Some(threads.iter().copied().collect()),
            ticks,
        };
        // Thread 1 ran 2 ms more, 2 ended (its 9 ms are not taken away), 3 started
        // and ran 0.5 ms.
        let before = reading(&[(1, 10_000_000), (2, 9_000_000)], 0.5);
        let after = reading(&[(1, 12_000_000), (3, 500_000)], 0.6);
        assert_eq!(after.seconds_since(&before), 0.0025);
        // Without a per-thread count on either side, the ticks.
        let ticks_only = CpuReading {
            threads: None,
            ticks: 0.8,
        };
        assert!((ticks_only.seconds_since(&before) - 0.3).abs() < 1e-9);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_is_counted_in_nanoseconds() {
        let pid = std::process::id();
        let before = CpuReading::of(pid);
        assert!(before.threads.is_some(), "schedstat of this process");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let spent = CpuReading::of(pid).seconds_since(&before);
        assert!(spent > 0.0, "{spent} s ({x})");
    }
}
