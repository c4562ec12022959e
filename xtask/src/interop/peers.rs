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

use crate::Result;

/// A peer, ready to start (or why not).
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub unavailable: Option<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Follows the runner's contract itself: `program args...` with the environment.
    Contract { program: PathBuf, args: Vec<String> },
    Ngtcp2 { client: PathBuf, server: PathBuf },
    None,
}

pub fn get(name: &str, quay_bin: &Path) -> Result<Peer> {
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
fn ngtcp2() -> std::result::Result<(PathBuf, PathBuf), String> {
    let find = || {
        let c = PathBuf::from("/usr/bin/gtlsclient");
        let s = PathBuf::from("/usr/bin/gtlsserver");
        (c.is_file() && s.is_file()).then_some((c, s))
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        return Err("gtlsclient/gtlsserver missing (apt-get install ngtcp2-client \
                    ngtcp2-server, as root)"
            .into());
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "ngtcp2-client", "ngtcp2-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(found) if installed => Ok(found),
        _ => Err("apt-get could not install ngtcp2-client and ngtcp2-server".into()),
    }
}

impl Peer {
    /// Starts the peer with the runner's environment `env` (which holds `ROLE`).
    pub fn spawn(&self, env: &[(String, String)], log: &Path) -> Result<Child> {
        match &self.kind {
            Kind::Contract { program, args } => super::spawn(program, args, env, log),
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

/// Starts gtlsserver/gtlsclient for a case they can run; the others exit 127 through
/// a `sh -c 'exit 127'`, as an unsupporting endpoint would.
fn ngtcp2_spawn(
    client: &Path,
    server: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<Child> {
    let case = var(env, "TESTCASE");
    // Debian's examples speak HTTP/3 only: hq-interop cases cannot run against them.
    let supported = matches!(case, "http3");
    if !supported {
        return super::spawn(
            Path::new("sh"),
            &["-c".into(), "exit 127".into()],
            env,
            log,
        );
    }
    let certs = PathBuf::from(var(env, "CERTS"));
    if var(env, "ROLE") == "server" {
        let args = vec![
            "-q".to_owned(),
            "-d".to_owned(),
            var(env, "WWW").to_owned(),
            var(env, "SERVER_IP").to_owned(),
            var(env, "PORT").to_owned(),
            certs.join("priv.key").display().to_string(),
            certs.join("cert.pem").display().to_string(),
        ];
        super::spawn(server, &args, env, log)
    } else {
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
        let mut args = vec![
            "-q".to_owned(),
            "--exit-on-all-streams-close".to_owned(),
            "--download".to_owned(),
            var(env, "DOWNLOADS").to_owned(),
            host.to_owned(),
            port.to_owned(),
        ];
        args.extend(requests.iter().map(|r| (*r).to_owned()));
        super::spawn(client, &args, env, log)
    }
}
