//! `target/interop/results.json` and `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use super::{Outcome, Verdict, cases};
use crate::Result;

pub(super) fn mean_stdev(v: &[f64]) -> String {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    format!(
        "{mean:.2} ± {:.2} Mbit/s over {} run(s)",
        var.sqrt(),
        v.len()
    )
}

fn verdict(v: &Verdict) -> (&'static str, &str) {
    match v {
        Verdict::Pass => ("pass", ""),
        Verdict::Fail(r) => ("fail", r),
        Verdict::Unsupported(r) => ("unsupported", r),
        Verdict::Unavailable(r) => ("unavailable", r),
    }
}

pub(super) fn write(dir: &Path, outcomes: &[Outcome]) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let results: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let (result, reason) = verdict(&o.result);
            let goodput: Vec<serde_json::Value> = o
                .goodput
                .iter()
                .map(|g| {
                    serde_json::Number::from_f64((g * 1000.0).round() / 1000.0)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number)
                })
                .collect();
            serde_json::json!({
                "server": o.server,
                "client": o.client,
                "case": o.case,
                "result": result,
                "reason": reason,
                "seconds": (o.seconds * 100.0).round() / 100.0,
                "goodput_mbps": goodput,
            })
        })
        .collect();
    let json = serde_json::to_string_pretty(&serde_json::json!({"results": results}))
        .map_err(|e| e.to_string())?
        + "\n";
    let path = dir.join("results.json");
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = dir.join("report.md");
    std::fs::write(&path, markdown(outcomes)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The matrix as the public interop site draws it: a row per server, a column per
/// client, each cell the letters of the cases that passed, failed and were
/// unsupported.
pub(super) fn markdown(outcomes: &[Outcome]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    let mut clients: Vec<&str> = Vec::new();
    for o in outcomes {
        if !servers.contains(&o.server.as_str()) {
            servers.push(&o.server);
        }
        if !clients.contains(&o.client.as_str()) {
            clients.push(&o.client);
        }
    }
    let abbrev = |name: &str| {
        cases::all()
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.abbrev)
            .or_else(|| {
                super::browser::CASES
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, a, _)| *a)
            })
            .unwrap_or("?")
    };
    let mut cells: BTreeMap<(&str, &str), [Vec<&str>; 3]> = BTreeMap::new();
    for o in outcomes {
        let cell = cells.entry((&o.server, &o.client)).or_default();
        let slot = match o.result {
            Verdict::Pass => 0,
            Verdict::Fail(_) => 1,
            Verdict::Unsupported(_) | Verdict::Unavailable(_) => 2,
        };
        cell[slot].push(abbrev(o.case));
    }
    let mut md = String::from("# Interop results\n\n");
    md.push_str(
        "Rows: server; columns: client. Each cell: **passed** / failed / unsupported or \
         unavailable, by case letter (legend below).\n\n",
    );
    let _ = writeln!(md, "| server \\ client | {} |", clients.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(clients.len()));
    for s in &servers {
        let mut row = format!("| **{s}** |");
        for c in &clients {
            match cells.get(&(*s, *c)) {
                Some([p, f, u]) => {
                    let _ = write!(
                        row,
                        " **{}** / {} / {} |",
                        p.join(" "),
                        if f.is_empty() {
                            "-".into()
                        } else {
                            f.join(" ")
                        },
                        if u.is_empty() {
                            "-".into()
                        } else {
                            u.join(" ")
                        }
                    );
                }
                None => row.push_str(" |"),
            }
        }
        md.push_str(&row);
        md.push('\n');
    }
    let goodput: Vec<&Outcome> = outcomes.iter().filter(|o| !o.goodput.is_empty()).collect();
    if !goodput.is_empty() {
        md.push_str("\n## Goodput (10 MiB, 10 Mbit/s, 30 ms RTT)\n\n| server | client | goodput |\n|---|---|---|\n");
        for o in goodput {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                o.server,
                o.client,
                mean_stdev(&o.goodput)
            );
        }
    }
    let notes: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.result != Verdict::Pass)
        .collect();
    if !notes.is_empty() {
        md.push_str("\n## Not passed\n\n| server | client | case | result | reason |\n|---|---|---|---|---|\n");
        for o in notes {
            let (r, why) = verdict(&o.result);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {r} | {} |",
                o.server,
                o.client,
                o.case,
                why.replace('|', "\\|")
            );
        }
    }
    md.push_str("\n## Legend\n\n| letter | case | checks |\n|---|---|---|\n");
    for c in cases::all() {
        let _ = writeln!(md, "| {} | {} | {} |", c.abbrev, c.name, c.about);
    }
    for (name, abbrev, about) in super::browser::CASES {
        let _ = writeln!(md, "| {abbrev} | {name} | {about} |");
    }
    md
}
