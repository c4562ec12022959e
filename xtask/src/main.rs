//! `cargo xtask test | demo | interop | bench`: the project's own commands.
//!
//! xtask depends on none of the library crates, so it builds in seconds on a fresh
//! machine and can install the native prerequisites (cmake, libclang) before anything
//! links BoringSSL.

mod attack;
mod bench;
mod interop;
mod lb;
mod msrv;
mod prereqs;
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test    install native prerequisites if missing, then fmt check, the MSRV check,
          clippy -D warnings,
          every test (unit, integration, property, doc), the loom model of the
          queue, rustdoc -D warnings, the
          examples end to end, an HTTP/3 interop smoke test against aioquic,
          `interop --quick`, `bench --quick` and `attack --quick`
  demo    release build, start h3-server, fetch a page and 100 MiB, upload to /sha256
          and check the digest with h3-client, report, stop
  interop the QUIC Interop Runner's cases against independent implementations
          through a network shim (`cargo xtask interop --help`)
  bench   the field's benchmark scenarios against h3-server (and, with --vs, tokio-quiche
          and quinn): goodput, requests/s, latency, handshakes/s, server CPU and memory
          (`cargo xtask bench --help`)
  attack  bounded attacks on h3-server (garbage, Initial flood, slowloris, request
          flood, connection churn, SIGTERM under loss) while legitimate clients work,
          every legitimate transfer checked (`cargo xtask attack --help`)
  lb      three h3-servers behind the Linux kernel as a QUIC-LB load balancer (network
          namespaces, nftables): downloads spread by hash, migrating clients routed by
          server ID (`cargo xtask lb --help`)
  msrv    no dependency of the published crates needs a newer Rust than the
          workspace's rust-version (part of `test`)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("demo") => demo(),
        Some("interop") => interop::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("attack") => attack::run(&args[1..]),
        Some("lb") => lb::run(&args[1..]),
        Some("msrv") => prereqs::ensure().and_then(|env| msrv::check(&env)),
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
    msrv::check(&env)?;
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
    root_tests(&env)?;
    // The criterion benchmarks, each run once as a test, so they cannot rot.
    run(
        &env,
        "cargo",
        &[
            "test",
            "--workspace",
            "--all-features",
            "--locked",
            "--benches",
        ],
    )?;
    // The published crates build with their optional parts (self-signed, qlog,
    // echo, tower, metrics) turned off.
    run(
        &env,
        "cargo",
        &[
            "clippy",
            "--locked",
            "--no-default-features",
            "-p",
            "quic-app",
            "-p",
            "quic-io",
            "-p",
            "quic-h3",
            "-p",
            "quic-masque",
            "-p",
            "quic-doq",
            "-p",
            "quay",
            "--",
            "-D",
            "warnings",
        ],
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
    // The loom model of quic_app::queue: its own small crate, so `--cfg loom` does not
    // rebuild the rest.
    run(
        &env.with("RUSTFLAGS", "--cfg loom"),
        "cargo",
        &[
            "test",
            "--release",
            "--locked",
            "--manifest-path",
            "loom/Cargo.toml",
        ],
    )?;
    build_examples(&env, false, &[])?;
    examples_end_to_end(&root().join("target/debug"))?;
    interop::smoke(&root().join("target/debug"))?;
    interop::run(&["--quick".to_owned()])?;
    bench::run(&["--quick".to_owned()])?;
    attack::run(&["--quick".to_owned()])?;
    lb::run(&["--quick".to_owned()])?;
    println!(
        "\nxtask test: every step passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the example binaries `bins` (every one when empty), `--release` or not.
///
/// A debug build goes through `cargo test --no-run` of the whole workspace with all
/// features: the units the test run builds, binaries included. A `cargo build -p
/// quay-examples` resolves the build scripts' dependencies with other features
/// (the workspace's dev-dependencies are out of it), which gives `boring-sys` another
/// hash and compiles BoringSSL a second time.
pub(crate) fn build_examples(env: &prereqs::Env, release: bool, bins: &[&str]) -> Result {
    if !release {
        return run(
            env,
            "cargo",
            &[
                "test",
                "--workspace",
                "--all-features",
                "--locked",
                "--no-run",
            ],
        );
    }
    let mut args = vec!["build", "--release", "--locked", "-p", "quay-examples"];
    for bin in bins {
        args.extend(["--bin", bin]);
    }
    run(env, "cargo", &args)
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

pub(crate) fn path_str(p: &Path) -> Result<&str> {
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
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| format!("cannot create {}: {e}", www.display()))?;
    std::fs::write(www.join("index.html"), DEMO_PAGE)
        .map_err(|e| format!("cannot write the demo page: {e}"))?;
    println!(
        "\n==> starting h3-server (fresh self-signed certificate in {})",
        cert.display()
    );
    let server = procs::Server::start(
        &bin.join("h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--root",
            path_str(&www)?,
            "--write-cert",
            path_str(&cert)?,
        ],
    )?;
    let base = format!("https://localhost:{}", server.addr.port());
    println!("    h3-server is listening on {}", server.addr);
    let client = bin.join("h3-client");
    let ca = path_str(&cert)?.to_owned();
    let result = demo_steps(&client, &ca, &base, &dir);
    println!("\n==> stopping h3-server");
    server.stop()?;
    let report = result?;
    println!("\n==> report");
    for line in &report {
        println!("    {line}");
    }
    println!("demo finished: HTTP/3 over QUIC worked end to end");
    Ok(())
}

const DEMO_PAGE: &str = "<!doctype html><title>quay</title><h1>Hello from quay over HTTP/3</h1>\n";

/// The tests a plain `cargo test` leaves out (`#[ignore]`) because they need root:
/// each takes a network namespace of its own and shapes its loopback with `tc` (a send
/// into a full socket buffer, which plain loopback never fills). Skipped, and said so,
/// where they cannot run.
fn root_tests(env: &prereqs::Env) -> Result {
    println!("\n==> tests that need root (network namespaces, tc)");
    let root = lb::running_as_root();
    let missing = ["ip", "tc"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("-V").output().is_err());
    if !root {
        println!("SKIPPED: root tests: not running as root");
        return Ok(());
    }
    if let Some(tool) = missing {
        println!("SKIPPED: root tests: `{tool}` (iproute2) is not installed");
        return Ok(());
    }
    if let Some(why) = shaped_namespace_unavailable() {
        println!("SKIPPED: root tests: {why}");
        return Ok(());
    }
    run(
        env,
        "cargo",
        &[
            "test",
            "--workspace",
            "--all-features",
            "--locked",
            "--lib",
            "--",
            "--ignored",
        ],
    )
}

/// Why the root tests' setup cannot be made here, if it cannot: a network namespace,
/// and in it a `tbf` queue on the loopback (a container without `CAP_SYS_ADMIN`, or a
/// kernel without `sch_tbf`, has neither).
fn shaped_namespace_unavailable() -> Option<String> {
    let shaped = lb::in_probe_namespace(|ns| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
            ])
            .args(["rate", "100bit", "burst", "1600", "limit", "10000000"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match shaped {
        None => Some("network namespaces cannot be made here".into()),
        Some(false) => Some("a tbf queue cannot be set on a namespace's loopback (sch_tbf)".into()),
        Some(true) => None,
    }
}

/// Runs the h3-client steps of the demo; returns the report lines.
fn demo_steps(client: &Path, ca: &str, base: &str, dir: &Path) -> Result<Vec<String>> {
    let mut report = Vec::new();
    let h3 = |args: &[&str]| -> Result<(String, String)> {
        let out = Command::new(client)
            .args(["--ca", ca, "--stats"])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", client.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!("h3-client {} failed:\n{stderr}", args.join(" ")));
        }
        Ok((stdout, stderr))
    };
    let summary = |stderr: &str| stderr.lines().last().unwrap_or("").trim().to_owned();

    println!("\n==> GET {base}/");
    let (page, stats) = h3(&[&format!("{base}/")])?;
    if page != DEMO_PAGE {
        return Err(format!("the page came back different: {page:?}"));
    }
    print!("{page}");
    report.push(format!(
        "page (first request: includes the QUIC handshake): {}",
        summary(&stats)
    ));

    println!("\n==> GET {base}/bytes/104857600 (100 MiB)");
    let download = dir.join("download.bin");
    let (_, stats) = h3(&[
        "-o",
        path_str(&download)?,
        &format!("{base}/bytes/104857600"),
    ])?;
    let bytes = std::fs::read(&download).map_err(|e| format!("cannot read the download: {e}"))?;
    let ok =
        bytes.len() == 104_857_600 && bytes.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8);
    if !ok {
        return Err(format!("the download is wrong ({} bytes)", bytes.len()));
    }
    let _ = std::fs::remove_file(&download);
    println!("    100 MiB received, every byte checked");
    report.push(format!("100 MiB download: {}", summary(&stats)));

    println!("\n==> POST {base}/sha256 (4 MiB upload)");
    let upload = dir.join("upload.bin");
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&upload, &data).map_err(|e| format!("cannot write the upload: {e}"))?;
    let (digest, stats) = h3(&[
        "--data",
        &format!("@{}", path_str(&upload)?),
        &format!("{base}/sha256"),
    ])?;
    let expected = sha256_hex(&upload)?;
    if digest.trim() != expected {
        return Err(format!(
            "digest mismatch: server {digest:?}, local {expected}"
        ));
    }
    println!("    server digest {} matches", digest.trim());
    report.push(format!("4 MiB upload + SHA-256: {}", summary(&stats)));
    Ok(report)
}

/// The SHA-256 of a file, by `sha256sum` (xtask has no crypto dependency of its own).
fn sha256_hex(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum printed nothing".to_owned())
}
