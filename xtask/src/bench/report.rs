//! The report: headline numbers per run, medians and ratios, `report.md` and
//! `results.json`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::measure::Run;
use super::scenarios::Kind;
use super::{Cell, charts};
use crate::{Result, root};

/// A number field of the load generator's JSON summary; NaN when absent (a run that
/// failed, or a peer's client that does not report it).
///
/// The key is looked for at any depth, first match in document order: quay-load puts
/// its latency percentiles under `latency_us`.
pub(super) fn field(json: &str, key: &str) -> f64 {
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
pub(super) fn metrics(kind: Kind, r: &Run) -> Vec<(&'static str, f64)> {
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

pub(super) fn summary_line(kind: Kind, r: &Run) -> String {
    metrics(kind, r)
        .iter()
        .map(|(k, v)| format!("{v:.2} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn median_min_max(mut v: Vec<f64>) -> (f64, f64, f64) {
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
pub(super) fn column(kind: Kind, runs: &[Run], i: usize) -> Vec<f64> {
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
pub(super) fn client_saturated(r: &Run) -> bool {
    let cpu = field(&r.load, "client_cpu_seconds");
    let secs = field(&r.load, "seconds");
    cpu.is_finite() && secs.is_finite() && secs > 0.0 && cpu / secs >= 0.9
}

pub(super) fn write(dir: &Path, cells: &[Cell], pinned: bool, unavailable: &[String]) -> Result {
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
        match u.strip_prefix("failed: ") {
            Some(f) => {
                let _ = writeln!(md, "Failed (left out of the medians): {f}.\n");
            }
            None => {
                let _ = writeln!(md, "Unavailable: {u}.\n");
            }
        }
    }
    let charts = charts::present(cells);
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
    charts::write(dir, cells, &servers, &charts)?;
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
    // ngtcp2's gtlsserver comes from Debian: its package's version.
    if let Ok(o) = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "ngtcp2-server"])
        .output()
        && o.status.success()
        && !o.stdout.is_empty()
    {
        out.push((
            "ngtcp2".to_owned(),
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        ));
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
