//! `cargo xtask attack`: bounded attacks on `h3-server` while legitimate clients
//! work, every legitimate transfer checked byte for byte (`quay-attack` does the
//! attacking and the checking; this runs each attack against a fresh server).
//!
//! Results: `target/attack/results.json` (an object whose `attacks` array has one
//! entry per attack: name, what it sent, legitimate transfers attempted and intact,
//! figures, checks) and `target/attack/report.md`; `--quick` writes them under
//! `target/attack/quick/`, leaving the last full report in place.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, path_str, procs, root};

const USAGE: &str = "\
usage: cargo xtask attack [--attack NAME]... [--quick]

  --attack  garbage initial-flood slowloris request-flood churn sigterm (default: all)
  --quick   a few seconds each, debug build (part of `cargo xtask test`); the full run
            uses a release build and larger counts

Each attack runs against a fresh h3-server on 127.0.0.1 while legitimate clients (from
127.0.0.2) download and upload, checked byte for byte. Exits non-zero if a legitimate
transfer was lost or a check failed.
";

/// Every attack, in the order they run; `sigterm` last, since it stops its server.
const ATTACKS: [&str; 6] = [
    "garbage",
    "initial-flood",
    "slowloris",
    "request-flood",
    "churn",
    "sigterm",
];

/// The server's limits for the attacks: short timeouts so the slow attacks end in
/// seconds, and a request limit the request flood goes past.
const SERVER_ARGS: [&str; 9] = [
    "--stats-route",
    "--first-request-timeout",
    "4",
    "--request-header-timeout",
    "2",
    "--max-requests-per-connection",
    "1000",
    "--max-connections-per-ip",
    "256",
];

pub(crate) fn run(args: &[String]) -> Result {
    let mut quick = false;
    let mut chosen: Vec<&'static str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--attack" => {
                let name = it
                    .next()
                    .ok_or_else(|| format!("--attack needs a name\n\n{USAGE}"))?;
                let known = ATTACKS
                    .iter()
                    .find(|k| **k == name)
                    .ok_or_else(|| format!("unknown attack {name:?}\n\n{USAGE}"))?;
                chosen.push(known);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if chosen.is_empty() {
        chosen = ATTACKS.to_vec();
    }
    let env = crate::prereqs::ensure()?;
    crate::build_examples(&env, !quick, &["h3-server", "quay-attack"])?;
    let profile = if quick { "debug" } else { "release" };
    let bin = root().join("target").join(profile);
    let dir = if quick {
        root().join("target/attack/quick")
    } else {
        root().join("target/attack")
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let mut entries = Vec::new();
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for name in chosen {
        println!("\n==> attack {name}");
        let started = Instant::now();
        let (entry, section, ok) = one(&bin, &dir, name, quick)?;
        println!(
            "<== attack {name}: {} ({:.1} s)",
            if ok { "pass" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(name);
        }
        entries.push(entry);
        sections.push(section);
    }
    let doc = serde_json::json!({"quick": quick, "build": profile, "attacks": entries});
    let json = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(dir.join("results.json"), json).map_err(|e| e.to_string())?;
    let md = format!(
        "# Attack report\n\n`cargo xtask attack{}`: h3-server ({profile} build) on \
         127.0.0.1; attacks from 127.0.1.0/24 and 127.0.2.0/24, legitimate clients from \
         127.0.0.2. Server flags: `{}`.\n\n{}",
        if quick { " --quick" } else { "" },
        SERVER_ARGS.join(" "),
        sections.concat()
    );
    std::fs::write(dir.join("report.md"), md).map_err(|e| e.to_string())?;
    println!("attack: report in {}", dir.join("report.md").display());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "attacks that lost legitimate traffic or failed a check: {failed:?}"
        ))
    }
}

/// Runs one attack against a fresh server: its JSON entry, its Markdown section, and
/// whether it passed.
fn one(
    bin: &Path,
    dir: &Path,
    name: &str,
    quick: bool,
) -> Result<(serde_json::Value, String, bool)> {
    let cert = dir.join(format!("{name}-cert.pem"));
    let mut server_args = vec!["--listen", "127.0.0.1:0", "--write-cert", path_str(&cert)?];
    server_args.extend(SERVER_ARGS);
    let server = procs::Server::start(&bin.join("h3-server"), &server_args)?;
    let pid = server.pid().to_string();
    let target = server.addr.to_string();
    let json_path = dir.join(format!("{name}.json"));
    let md_path = dir.join(format!("{name}.md"));
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&md_path);
    let mut cmd = Command::new(bin.join("quay-attack"));
    cmd.args([
        "--target",
        &target,
        "--ca",
        path_str(&cert)?,
        "--attack",
        name,
    ])
    .args(["--server-pid", &pid, "--json", path_str(&json_path)?])
    .args(["--markdown", path_str(&md_path)?])
    .stdout(Stdio::null());
    if quick {
        cmd.arg("--quick");
    }
    let limit = Duration::from_secs(if quick { 180 } else { 900 });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start quay-attack: {e}"))?;
    let status = procs::wait_or_kill(&mut child, limit)
        .ok_or_else(|| format!("quay-attack still running after {limit:?}: killed"));
    let mut ok = status.as_ref().is_ok_and(std::process::ExitStatus::success);
    let mut server_note = String::new();
    let mut server_clean = None;
    if name == "sigterm" {
        // The attack sent SIGTERM: the server must drain and exit on its own.
        let exit = server.wait_exit(Duration::from_secs(30));
        let clean = exit.is_some_and(|s| s.success());
        ok &= clean;
        server_note = format!(
            "- check: the server drained and exited on its own after SIGTERM — {}\n\n",
            match exit {
                Some(s) if s.success() => "ok".to_owned(),
                Some(s) => format!("FAILED ({s})"),
                None => "FAILED (still running after 30 s)".to_owned(),
            }
        );
        server_clean = Some(clean);
    } else {
        server.stop()?;
    }
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
        .filter(serde_json::Value::is_object);
    let entry = match report {
        Some(mut report) => {
            if let Some(clean) = server_clean {
                report["server_exited_cleanly"] = clean.into();
            }
            report
        }
        None => {
            ok = false;
            let why = match &status {
                Ok(s) => format!("quay-attack ended with {s} and wrote no readable report"),
                Err(e) => e.clone(),
            };
            serde_json::json!({"name": name, "error": why})
        }
    };
    let section = match std::fs::read_to_string(&md_path) {
        Ok(md) => match md.find("- result: ") {
            Some(at) if !server_note.is_empty() => {
                let result = if ok {
                    "- result: pass\n\n"
                } else {
                    "- result: FAIL\n\n"
                };
                format!(
                    "{}{}{result}",
                    &md[..at],
                    server_note.trim_end_matches('\n').to_owned() + "\n"
                )
            }
            _ => md,
        },
        Err(_) => format!("### {name}\n\n- result: FAIL (no report)\n\n"),
    };
    Ok((entry, section, ok))
}
