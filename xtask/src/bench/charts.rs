//! The SVG charts of the report.

use std::path::Path;

use super::Cell;
use super::report::{column, median_min_max, metrics};
use super::svg;
use crate::Result;

/// The charts: file, title, unit, (scenario, metric) per category, log scale.
pub(super) type Chart = (
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
            ("H1X", "server CPU ms/handshake"),
            ("H1P256", "server CPU ms/handshake"),
            ("H1P384", "server CPU ms/handshake"),
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

/// The charts that have at least one of `cells`' scenarios.
pub(super) fn present(cells: &[Cell]) -> Vec<&'static Chart> {
    CHARTS
        .iter()
        .filter(|(_, _, _, cats, _)| cats.iter().any(|(s, _)| cells.iter().any(|c| c.name == *s)))
        .collect()
}

/// Writes `charts` into `dir`, one bar per server in `servers`.
pub(super) fn write(dir: &Path, cells: &[Cell], servers: &[&str], charts: &[&Chart]) -> Result {
    for (file, title, unit, cats, log) in charts {
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
    Ok(())
}
