//! The test cases: files, network conditions, timeouts and the checks of each.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::shim::{Config, Facts, Link, Rebind};

/// One test case.
#[derive(Debug)]
pub(crate) struct Case {
    pub name: &'static str,
    /// The letters the public interop matrix uses for it.
    pub abbrev: &'static str,
    /// Certificates in the server's chain.
    pub chain: usize,
    pub timeout: Duration,
    pub checks: &'static [Check],
    /// What the case checks, for the docs and the report.
    pub about: &'static str,
}

/// A check on the shim's facts after the files arrived intact.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    /// Exactly this many handshakes (distinct client Initial SCIDs).
    Handshakes(usize),
    /// One handshake per file.
    HandshakePerFile,
    /// No Retry was sent.
    NoRetry,
    /// A Retry was sent and a later client Initial carried its token.
    RetryAndToken,
    /// The second connection's server Handshake bytes are fewer than the leaf
    /// certificate's DER: no Certificate message, so the session was resumed.
    Resumed,
    /// The client sent 0-RTT packets.
    ZeroRtt,
    /// Before the client's first Handshake packet, the server sent at most three times
    /// what it received (RFC 9000 §8.1).
    Amplification,
    /// Every long header carried QUIC v1.
    Version1,
    /// The shim rebound the client at least once.
    Rebound,
}

impl Check {
    /// Checks `f`; `files` were requested, `cert_len` is the leaf certificate's DER size.
    pub(crate) fn verify(&self, f: &Facts, files: usize, cert_len: u64) -> Result<(), String> {
        let handshakes = f.to_server.initial_scids.len();
        match self {
            Check::Handshakes(n) if handshakes != *n => {
                Err(format!("{handshakes} handshakes, expected {n}"))
            }
            Check::HandshakePerFile if handshakes != files => {
                Err(format!("{handshakes} handshakes for {files} files"))
            }
            Check::NoRetry if f.to_client.retry > 0 => Err("the server sent a Retry".into()),
            Check::RetryAndToken if f.to_client.retry == 0 => Err("no Retry packet".into()),
            Check::RetryAndToken if f.to_server.initial_with_token == 0 => {
                Err("no client Initial carried the Retry token".into())
            }
            Check::Resumed => {
                let hs = &f.to_client.handshake_bytes;
                match hs.as_slice() {
                    [(_, _), (_, second), ..] if *second < cert_len => Ok(()),
                    [(_, first), (_, second), ..] => Err(format!(
                        "second handshake not resumed: server sent {second} Handshake \
                         bytes ({first} in the first), room for its {cert_len}-byte \
                         certificate"
                    )),
                    _ => Err(format!("{} server handshakes seen, expected 2", hs.len())),
                }
            }
            Check::ZeroRtt if f.to_server.zero_rtt == 0 => {
                Err("the client sent no 0-RTT packet".into())
            }
            Check::Amplification => {
                let (c, s) = (
                    f.client_bytes_before_handshake,
                    f.server_bytes_before_handshake,
                );
                if s > 3 * c {
                    Err(format!(
                        "server sent {s} bytes for {c} received before address validation \
                         (over 3x)"
                    ))
                } else {
                    Ok(())
                }
            }
            Check::Version1 => {
                let v: BTreeSet<u32> = f
                    .to_server
                    .versions
                    .union(&f.to_client.versions)
                    .copied()
                    .collect();
                if v.iter().all(|v| *v == 1) {
                    Ok(())
                } else {
                    Err(format!("versions seen: {v:x?}"))
                }
            }
            Check::Rebound if f.rebinds == 0 => {
                Err("the transfer ended before the first rebinding".into())
            }
            _ => Ok(()),
        }
    }
}

const S: Duration = Duration::from_secs(1);

/// Every case, in the order of the public matrix.
pub(crate) fn all() -> &'static [Case] {
    CASES
}

const ONE: &[Check] = &[Check::Handshakes(1), Check::NoRetry, Check::Version1];

static CASES: &[Case] = {
    use Check::*;
    &[
        Case {
            name: "handshake",
            abbrev: "H",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: ONE,
            about: "one small file; exactly one handshake, no Retry, QUIC v1",
        },
        Case {
            name: "transfer",
            abbrev: "D",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1), Version1],
            about: "2, 3 and 5 MiB on one connection, small initial flow-control windows",
        },
        Case {
            name: "longrtt",
            abbrev: "LR",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: ONE,
            about: "1.5 s RTT: the handshake needs retransmitted Initials",
        },
        Case {
            name: "chacha20",
            abbrev: "C20",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: ONE,
            about: "the client offers only ChaCha20-Poly1305 (not visible to the shim)",
        },
        Case {
            name: "multiplexing",
            abbrev: "M",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "1999 small files on one connection, beyond the server's stream limit",
        },
        Case {
            name: "retry",
            abbrev: "S",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1), RetryAndToken],
            about: "the server sends Retry; the client's next Initial carries the token",
        },
        Case {
            name: "resumption",
            abbrev: "R",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(2), Resumed],
            about: "two connections; the second resumes (server sends no certificate)",
        },
        Case {
            name: "zerortt",
            abbrev: "Z",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(2), ZeroRtt],
            about: "two connections; the second sends its requests in 0-RTT",
        },
        Case {
            name: "http3",
            abbrev: "3",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1)],
            about: "three files over HTTP/3 on one connection",
        },
        Case {
            name: "blackhole",
            abbrev: "B",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "10 Mbit/s link blackholed both ways 1 s in every 3 s",
        },
        Case {
            name: "keyupdate",
            abbrev: "U",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1)],
            about: "the client initiates a key update (not visible to the shim)",
        },
        Case {
            name: "ecn",
            abbrev: "E",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1)],
            about: "ECN marks (the shim cannot see them; quay does not set them)",
        },
        Case {
            name: "amplificationlimit",
            abbrev: "A",
            chain: 9,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1), Amplification],
            about: "a 9-certificate chain and lost client packets: the server stays \
                    within 3x before the address is validated",
        },
        Case {
            name: "handshakeloss",
            abbrev: "L1",
            chain: 1,
            timeout: Duration::from_secs(300),
            checks: &[HandshakePerFile],
            about: "50 connections, one file each, 30 % loss both ways",
        },
        Case {
            name: "transferloss",
            abbrev: "L2",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "2 and 3 MiB with 2 % loss both ways",
        },
        Case {
            name: "handshakecorruption",
            abbrev: "C1",
            chain: 1,
            timeout: Duration::from_secs(300),
            checks: &[HandshakePerFile],
            about: "50 connections, one file each, 30 % corrupted both ways",
        },
        Case {
            name: "transfercorruption",
            abbrev: "C2",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "2 and 3 MiB with 2 % corrupted both ways",
        },
        Case {
            name: "ipv6",
            abbrev: "6",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: ONE,
            about: "handshake and transfer over ::1",
        },
        Case {
            name: "v2",
            abbrev: "V2",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Handshakes(1)],
            about: "QUIC version 2 (RFC 9369)",
        },
        Case {
            name: "rebind-port",
            abbrev: "BP",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Rebound],
            about: "the client's port changes every second (NAT rebinding)",
        },
        Case {
            name: "rebind-addr",
            abbrev: "BA",
            chain: 1,
            timeout: Duration::from_secs(60),
            checks: &[Rebound],
            about: "the client's address changes every second (another 127.0.0.x)",
        },
        Case {
            name: "connectionmigration",
            abbrev: "CM",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "the client migrates to the server's preferred address",
        },
        Case {
            name: "goodput",
            abbrev: "G",
            chain: 1,
            timeout: Duration::from_secs(120),
            checks: &[Handshakes(1)],
            about: "10 MiB over a 10 Mbit/s, 30 ms RTT link; Mbit/s, mean and stdev over runs",
        },
    ]
};

pub(crate) fn names() -> String {
    all().iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The files a case serves: (name, length). Content is random.
pub(crate) fn files(case: &Case, www: &Path, quick: bool) -> Result<Vec<(String, u64)>, String> {
    let sizes: Vec<u64> = match case.name {
        "transfer" if quick => vec![MIB, 2 * MIB],
        "transfer" | "transfercorruption" => vec![2 * MIB, 3 * MIB, 5 * MIB],
        "transferloss" if quick => vec![MIB],
        "transferloss" => vec![2 * MIB, 3 * MIB],
        "multiplexing" => vec![32; 1999],
        "resumption" | "zerortt" => vec![KIB, 2 * KIB, 3 * KIB],
        "http3" => vec![KIB, 100 * KIB, MIB],
        "handshakeloss" | "handshakecorruption" => vec![KIB; 50],
        "blackhole" => vec![5 * MIB],
        "keyupdate" => vec![3 * MIB],
        "rebind-port" | "rebind-addr" => vec![4 * MIB],
        "goodput" => vec![10 * MIB],
        "ipv6" => vec![KIB, MIB],
        _ => vec![KIB],
    };
    let mut rng = (sizes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let name = format!("{}-{i}.bin", case.name);
        let mut data = vec![0u8; *len as usize];
        for chunk in data.chunks_mut(8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let b = rng.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        std::fs::write(www.join(&name), &data).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, *len));
    }
    Ok(out)
}

/// A self-signed ECDSA P-256 certificate with `san` (`DNS:localhost,IP:127.0.0.1`,
/// ...) as its subjectAltName: `dir/cert.pem` and `dir/key.pem`.
pub(crate) fn self_signed(dir: &Path, san: &str) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "7"])
        .args(["-subj", "/CN=quay test", "-addext"])
        .arg(format!("subjectAltName={san}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| format!("openssl is needed for certificates: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    Ok((cert, key))
}

/// A certificate chain of `chain` certificates (leaf first; the runner's layout:
/// `cert.pem` with the chain, `priv.key`, `ca.pem`), made with openssl. Returns the
/// leaf's DER size.
pub(crate) fn certificates(dir: &Path, chain: usize) -> Result<u64, String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl is needed for certificates: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // The root CA.
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "7",
        "-subj",
        "/CN=quay interop root",
    ];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&args)?;
    let mut sans = "subjectAltName=DNS:server,DNS:server4,DNS:server6,DNS:localhost,\
                    IP:127.0.0.1,IP:::1"
        .to_owned();
    if chain > 1 {
        // As the runner does for amplificationlimit: a long chain of large
        // certificates, so the server's first flight is far beyond 3x the client's.
        for i in 0..40 {
            sans.push_str(&format!(",DNS:extra-name-{i}.quay-interop.example"));
        }
    }
    // Intermediates, each signed by the previous, then the leaf.
    let mut issuer = ("ca.pem".to_owned(), "ca.key".to_owned());
    let mut chain_files = Vec::new();
    for i in 1..chain.max(1) {
        let (crt, key, csr) = (
            format!("int{i}.pem"),
            format!("int{i}.key"),
            format!("int{i}.csr"),
        );
        let subj = format!("/CN=quay interop intermediate {i}");
        let mut args = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
        args.extend(ec);
        run(&args)?;
        let ext = format!("ext{i}.cnf");
        std::fs::write(
            dir.join(&ext),
            "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n",
        )
        .map_err(|e| e.to_string())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &issuer.0,
            "-CAkey",
            &issuer.1,
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])?;
        chain_files.push(crt.clone());
        issuer = (crt, key);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=server",
        "-keyout",
        "priv.key",
        "-out",
        "leaf.csr",
    ];
    args.extend(ec);
    run(&args)?;
    std::fs::write(dir.join("leaf.cnf"), format!("{sans}\n")).map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        &issuer.0,
        "-CAkey",
        &issuer.1,
        "-CAcreateserial",
        "-days",
        "7",
        "-extfile",
        "leaf.cnf",
        "-out",
        "leaf.pem",
    ])?;
    // cert.pem: the leaf, then the intermediates from the closest up.
    let mut pem = std::fs::read(dir.join("leaf.pem")).map_err(|e| e.to_string())?;
    for f in chain_files.iter().rev() {
        pem.extend(std::fs::read(dir.join(f)).map_err(|e| e.to_string())?);
    }
    std::fs::write(dir.join("cert.pem"), pem).map_err(|e| e.to_string())?;
    let leaf = std::fs::read_to_string(dir.join("leaf.pem")).map_err(|e| e.to_string())?;
    Ok(der_len(&leaf))
}

/// The DER size of the first PEM block in `pem`, from its base64 text.
fn der_len(pem: &str) -> u64 {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let pad = b64.bytes().rev().take_while(|b| *b == b'=').count() as u64;
    (b64.len() as u64 / 4) * 3 - pad
}

impl Case {
    /// The shim's configuration for this case.
    pub(crate) fn shim(&self, server: SocketAddr) -> Config {
        let clean = Link::default();
        let lossy = |loss: f64, corrupt: f64| Link {
            loss,
            corrupt,
            max_burst: 3,
            ..Link::default()
        };
        let slow = |delay_ms: u64| Link {
            delay: Duration::from_millis(delay_ms),
            rate: Some(10_000_000),
            queue_bytes: 25 * 1500,
            ..Link::default()
        };
        let (to_server, to_client) = match self.name {
            "longrtt" => {
                let l = Link {
                    delay: Duration::from_millis(750),
                    ..Link::default()
                };
                (l.clone(), l)
            }
            "handshakeloss" => (lossy(0.3, 0.0), lossy(0.3, 0.0)),
            "transferloss" => (lossy(0.02, 0.0), lossy(0.02, 0.0)),
            "handshakecorruption" => (lossy(0.0, 0.3), lossy(0.0, 0.3)),
            "transfercorruption" => (lossy(0.0, 0.02), lossy(0.0, 0.02)),
            "amplificationlimit" => {
                // The client's datagrams after its first are lost for a while: the
                // server, unvalidated, may only retransmit within its 3x budget.
                let mut l = Link::default();
                l.drop_indices.extend(1..6);
                (l, clean.clone())
            }
            "blackhole" | "goodput" | "rebind-port" | "rebind-addr" => (slow(15), slow(15)),
            _ => (clean.clone(), clean),
        };
        let rebind = match self.name {
            "rebind-port" => Some((Rebind::Port, S / 2, S)),
            "rebind-addr" => Some((Rebind::Addr, S / 2, S)),
            _ => None,
        };
        let blackhole = (self.name == "blackhole").then_some((2 * S, S));
        Config {
            server,
            to_server,
            to_client,
            rebind,
            blackhole,
            seed: self
                .name
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::der_len;

    #[test]
    fn der_length_comes_from_the_base64_text() {
        // 6 bytes → "AAECAwQF"; 5 bytes → "AAECAwQ=".
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        assert_eq!(der_len(pem), 6);
        let pem = "-----BEGIN X-----\nAAEC\nAwQ=\n-----END X-----\n";
        assert_eq!(der_len(pem), 5);
    }
}
