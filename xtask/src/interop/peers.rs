//! The peers: how each is found (or installed) and started in a role.
//!
//! - `quay`: the `interop-endpoint` example, which follows the runner's contract.
//! - `aioquic`: `xtask/interop/aioquic_endpoint.py` on aioquic from PyPI, in a venv
//!   under `target/interop/`; it follows the contract too.
//! - `ngtcp2`: Debian's `gtlsserver`/`gtlsclient` (GnuTLS, HTTP/3 only). xtask
//!   translates the contract into their arguments; as root it installs them with
//!   apt-get when missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::{Result, procs};

/// A peer, ready to start (or why not).
#[derive(Debug)]
pub(super) struct Peer {
    pub name: String,
    pub unavailable: Option<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Follows the runner's contract itself: `program args...` with the environment.
    Contract {
        program: PathBuf,
        args: Vec<String>,
    },
    Ngtcp2 {
        client: PathBuf,
        server: PathBuf,
    },
    None,
}

pub(super) fn get(name: &str, quay_bin: &Path) -> Result<Peer> {
    let peer = |kind, unavailable| Peer {
        name: name.to_owned(),
        unavailable,
        kind,
    };
    Ok(match name {
        "quay" => peer(
            Kind::Contract {
                program: quay_bin.to_owned(),
                args: Vec::new(),
            },
            None,
        ),
        "aioquic" => match super::venv() {
            Ok(python) => peer(
                Kind::Contract {
                    program: python,
                    args: vec![
                        super::scripts()
                            .join("aioquic_endpoint.py")
                            .display()
                            .to_string(),
                    ],
                },
                None,
            ),
            Err(why) => peer(Kind::None, Some(why)),
        },
        "ngtcp2" => match ngtcp2() {
            Ok((client, server)) => peer(Kind::Ngtcp2 { client, server }, None),
            Err(why) => peer(Kind::None, Some(why)),
        },
        other => return Err(format!("unknown peer `{other}` (quay, aioquic, ngtcp2)")),
    })
}

/// Debian's ngtcp2 examples, installed with apt-get when missing and running as root.
pub(crate) fn ngtcp2() -> std::result::Result<(PathBuf, PathBuf), String> {
    let find = || {
        // Debian puts the client in /usr/bin and the server in /usr/sbin.
        let c = PathBuf::from("/usr/bin/gtlsclient");
        let s = PathBuf::from("/usr/sbin/gtlsserver");
        (c.is_file() && s.is_file()).then_some((c, s))
    };
    install_with_apt(&["ngtcp2-client", "ngtcp2-server"], find)
}

/// What `find` finds; when it finds nothing and this runs as root, `packages` are
/// installed with apt-get first. The error says what to install by hand.
pub(crate) fn install_with_apt<T>(
    packages: &[&str],
    find: impl Fn() -> Option<T>,
) -> std::result::Result<T, String> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let list = packages.join(" ");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return Err(format!("not installed (apt-get install {list}, as root)"));
    }
    println!("  installing {list} with apt-get (once)");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(found) if installed => Ok(found),
        _ => Err(format!("apt-get could not install {list}")),
    }
}

impl Peer {
    /// Starts the peer with the runner's environment `env` (which holds `ROLE`).
    pub(super) fn spawn(&self, env: &[(String, String)], log: &Path) -> Result<Child> {
        match &self.kind {
            Kind::Contract { program, args } => procs::spawn_logged(program, args, env, log),
            Kind::Ngtcp2 { client, server } => ngtcp2_spawn(client, server, env, log),
            Kind::None => Err(format!("{} is unavailable", self.name)),
        }
    }
}

fn var<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// Cases Debian's gtlsserver/gtlsclient (ngtcp2 0.12) can take part in, over HTTP/3.
const NGTCP2_CASES: &[&str] = &[
    "handshake",
    "transfer",
    "longrtt",
    "chacha20",
    "multiplexing",
    "retry",
    "resumption",
    "zerortt",
    "http3",
    "blackhole",
    "keyupdate",
    "amplificationlimit",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "ipv6",
    "rebind-port",
    "rebind-addr",
    "goodput",
];

/// Quotes `s` for `sh -c`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Starts gtlsserver/gtlsclient with the arguments that match the runner's
/// environment; a case they cannot run exits 127, as an unsupporting endpoint would.
fn ngtcp2_spawn(
    client: &Path,
    server: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    let case = var(env, "TESTCASE");
    if !NGTCP2_CASES.contains(&case) {
        return procs::spawn_logged(Path::new("sh"), &["-c".into(), "exit 127".into()], env, log);
    }
    let certs = PathBuf::from(var(env, "CERTS"));
    if var(env, "ROLE") == "server" {
        let mut args = vec![
            "-q".to_owned(),
            "-d".to_owned(),
            var(env, "WWW").to_owned(),
            "--max-streams-bidi=100".to_owned(),
        ];
        if case == "retry" {
            args.push("-V".to_owned());
        }
        args.extend([
            var(env, "SERVER_IP").to_owned(),
            var(env, "PORT").to_owned(),
            certs.join("priv.key").display().to_string(),
            certs.join("cert.pem").display().to_string(),
        ]);
        return procs::spawn_logged(server, &args, env, log);
    }
    let requests: Vec<&str> = var(env, "REQUESTS").split_whitespace().collect();
    let first = requests.first().copied().unwrap_or("");
    let authority = first
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (authority, "443"),
    };
    let downloads = var(env, "DOWNLOADS");
    let session = Path::new(downloads)
        .parent()
        .unwrap_or(Path::new("."))
        .join("ngtcp2-session");
    let mut base = vec![
        "-q".to_owned(),
        // The same patience as the other endpoints: under the loss cases' 30 % loss a
        // handshake can need more than the default 10 s.
        "--handshake-timeout=60s".to_owned(),
        "--timeout=60s".to_owned(),
        "--exit-on-all-streams-close".to_owned(),
        format!("--download={downloads}"),
    ];
    match case {
        "chacha20" => base.push(
            // A GnuTLS priority string: TLS 1.3 with ChaCha20-Poly1305 only.
            "--ciphers=NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305".into(),
        ),
        "keyupdate" => base.push("--key-update=100ms".into()),
        "resumption" | "zerortt" => {
            base.push(format!(
                "--session-file={}",
                session.join("ticket").display()
            ));
            base.push(format!("--tp-file={}", session.join("tp").display()));
            if case == "resumption" {
                base.push("--disable-early-data".into());
            }
        }
        _ => {}
    }
    base.extend([host.to_owned(), port.to_owned()]);
    let command = |uris: &[&str]| {
        let mut words = vec![sh_quote(&client.display().to_string())];
        words.extend(base.iter().map(|a| sh_quote(a)));
        words.extend(uris.iter().map(|u| sh_quote(u)));
        words.join(" ")
    };
    // One connection for all files, or the split the case asks for.
    let script = match case {
        "resumption" | "zerortt" => format!(
            "mkdir -p {} && {} && {}",
            sh_quote(&session.display().to_string()),
            command(&requests[..1.min(requests.len())]),
            command(&requests[1.min(requests.len())..])
        ),
        "handshakeloss" | "handshakecorruption" => requests
            .iter()
            .map(|u| command(&[u]))
            .collect::<Vec<_>>()
            .join(" && "),
        _ => command(&requests),
    };
    procs::spawn_logged(Path::new("sh"), &["-c".into(), script], env, log)
}
