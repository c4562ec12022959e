//! `cargo xtask test | demo`: the project's own commands.
//!
//! xtask depends on none of the library crates, so it builds in seconds on a fresh
//! machine and can install the native prerequisites (cmake, libclang) before anything
//! links BoringSSL.

mod prereqs;
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test    install native prerequisites if missing, then fmt check, clippy -D warnings,
          every test (unit, integration, doc), rustdoc -D warnings, and the
          examples end to end
  demo    release build, start echo-server, run echo-client against it, report, stop
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
        None => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

/// Runs a command in the workspace root with the prerequisites' environment; fails
/// with the command line when it fails.
fn run(env: &prereqs::Env, program: &str, args: &[&str]) -> Result {
    println!("\n==> {program} {}", args.join(" "));
    let started = Instant::now();
    let status = env
        .apply(Command::new(program).args(args).current_dir(root()))
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    println!(
        "<== {program} {} ({:.1} s)",
        args.first().unwrap_or(&""),
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{program} {}` failed ({status})", args.join(" ")))
    }
}

fn test() -> Result {
    let env = prereqs::ensure()?;
    let started = Instant::now();
    run(&env, "cargo", &["fmt", "--all", "--", "--check"])?;
    run(
        &env,
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run(
        &env,
        "cargo",
        &["test", "--workspace", "--all-features", "--locked"],
    )?;
    // Broken intra-doc links and malformed docs fail the run, as in CI.
    run(
        &env.with("RUSTDOCFLAGS", "-D warnings"),
        "cargo",
        &[
            "doc",
            "--workspace",
            "--no-deps",
            "--all-features",
            "--locked",
        ],
    )?;
    run(&env, "cargo", &["build", "--locked", "-p", "quay-examples"])?;
    examples_end_to_end(&root().join("target/debug"))?;
    println!(
        "\nxtask test: every step passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the echo examples against each other: verified echo with a CA, with
/// `--insecure`, and a client with the wrong CA that must fail.
fn examples_end_to_end(bin: &Path) -> Result {
    println!("\n==> examples end to end");
    let dir = root().join("target/xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cert = dir.join("echo-cert.pem");
    let server = procs::Server::start(
        &bin.join("echo-server"),
        &["--listen", "127.0.0.1:0", "--write-cert", path_str(&cert)?],
    )?;
    let addr = server.addr.to_string();
    let client = bin.join("echo-client");
    let other = other_ca(&dir)?;
    let cases: [(&str, Vec<&str>, bool); 3] = [
        (
            "verified echo, 8 streams x 1 MiB",
            vec![
                "--connect",
                &addr,
                "--ca",
                path_str(&cert)?,
                "--streams",
                "8",
                "--bytes",
                "1048576",
            ],
            true,
        ),
        (
            "insecure echo, 3 connections",
            vec![
                "--connect",
                &addr,
                "--insecure",
                "--streams",
                "2",
                "--bytes",
                "10000",
                "--connections",
                "3",
            ],
            true,
        ),
        (
            "a client that trusts another CA is refused",
            vec![
                "--connect",
                &addr,
                "--ca",
                path_str(&other)?,
                "--bytes",
                "10",
            ],
            false,
        ),
    ];
    let mut passed = 0;
    let mut failed = 0;
    for (name, args, should_pass) in &cases {
        let out = Command::new(&client)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
        let ok = out.status.success() == *should_pass;
        println!(
            "  {} {name}: exit {}\n    {}",
            if ok { "ok  " } else { "FAIL" },
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(if out.status.success() {
                &out.stdout
            } else {
                &out.stderr
            })
            .trim()
            .replace('\n', "\n    ")
        );
        if ok { passed += 1 } else { failed += 1 }
    }
    server.stop()?;
    println!("examples: {passed} passed, {failed} failed");
    if failed > 0 {
        return Err(format!("{failed} example run(s) failed"));
    }
    Ok(())
}

/// A CA certificate that did not sign the server's: a second server's generated one.
fn other_ca(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("other-cert.pem");
    let bin = root().join("target/debug/echo-server");
    let other = procs::Server::start(
        &bin,
        &["--listen", "127.0.0.1:0", "--write-cert", path_str(&path)?],
    )?;
    other.stop()?;
    Ok(path)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("path is not UTF-8: {}", p.display()))
}

fn demo() -> Result {
    let env = prereqs::ensure()?;
    run(
        &env,
        "cargo",
        &["build", "--release", "--locked", "-p", "quay-examples"],
    )?;
    let bin = root().join("target/release");
    let dir = root().join("target/xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cert = dir.join("demo-cert.pem");
    println!(
        "\n==> starting echo-server (self-signed certificate, written to {})",
        cert.display()
    );
    let server = procs::Server::start(
        &bin.join("echo-server"),
        &["--listen", "127.0.0.1:0", "--write-cert", path_str(&cert)?],
    )?;
    println!("    echo-server is listening on {}", server.addr);
    let addr = server.addr.to_string();
    let client = bin.join("echo-client");
    let runs: [(&str, Vec<&str>); 2] = [
        (
            "4 streams x 25 MiB over one connection, every echoed byte verified",
            vec![
                "--connect",
                &addr,
                "--ca",
                path_str(&cert)?,
                "--streams",
                "4",
                "--bytes",
                "26214400",
            ],
        ),
        (
            "100 connections one after the other (handshake, close)",
            vec![
                "--connect",
                &addr,
                "--ca",
                path_str(&cert)?,
                "--streams",
                "1",
                "--bytes",
                "1",
                "--connections",
                "100",
            ],
        ),
    ];
    let mut result = Ok(());
    for (what, args) in &runs {
        println!("\n==> echo-client: {what}");
        let status = Command::new(&client)
            .args(args)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
        if !status.success() {
            result = Err(format!("echo-client failed ({status})"));
            break;
        }
    }
    println!("\n==> stopping echo-server");
    server.stop()?;
    result?;
    println!("demo finished: the QUIC echo server and client worked end to end");
    Ok(())
}
