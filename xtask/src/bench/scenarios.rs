//! The scenarios: what the load generator does and how each result is read.

pub(super) struct Scenario {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    /// Arguments for quay-load (full run, quick run).
    pub(super) load: fn(bool) -> Vec<String>,
    /// Extra h3-server arguments.
    pub(super) server: &'static [&'static str],
    /// How the result is read.
    pub(super) kind: Kind,
    /// Where the processes run.
    pub(super) placement: Placement,
    /// Measures a feature of quay's alone: the peers sit it out.
    pub(super) quay_only: bool,
    /// quay logs at INFO, with a span per request (otherwise at WARN: no span is
    /// created, as the peers create none).
    pub(super) spans: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// The server on core 0, the load generator on core 1.
    Pinned,
    /// Both free to use every core: the server's threads take what the load
    /// generator leaves.
    Shared,
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// Goodput down (or up) and server CPU seconds per GB.
    Bulk { up: bool },
    /// Requests/s, latency and server CPU µs per request.
    Requests,
    /// Handshakes/s and server CPU ms per handshake.
    Handshakes,
    /// Server memory growth per idle connection.
    Idle,
}

pub(super) fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

const MIB: u64 = 1024 * 1024;

pub(super) fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "B1",
            about: "bulk download on one connection",
            load: |q| {
                let n = if q { 32 * MIB } else { 1024 * MIB };
                let n = n.to_string();
                s(&["--requests", "1", "--response-size", &n])
            },
            server: &[],
            kind: Kind::Bulk { up: false },
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "B2",
            about: "bulk upload on one connection",
            load: |q| {
                let n = if q { 16 * MIB } else { 256 * MIB };
                let n = n.to_string();
                s(&[
                    "--requests",
                    "1",
                    "--request-size",
                    &n,
                    "--response-size",
                    "1",
                ])
            },
            server: &[],
            kind: Kind::Bulk { up: true },
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "B4",
            about: "100 concurrent streams x 1 MiB on one connection, 500 in all",
            load: |q| {
                // Five waves of 100: one wave is over in about 0.2 s, too short a
                // reading to compare servers by.
                let (inflight, total) = if q { ("20", "20") } else { ("100", "500") };
                s(&[
                    "--inflight",
                    inflight,
                    "--requests",
                    total,
                    "--response-size",
                    "1048576",
                ])
            },
            server: &[],
            kind: Kind::Bulk { up: false },
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "R1",
            about: "requests on one connection, 100 in flight, 512 B up / 4 KB down",
            load: |q| requests(q, "1", "100"),
            server: &[],
            kind: Kind::Requests,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "R2",
            about: "requests on 32 connections x 10 in flight, 512 B up / 4 KB down",
            load: |q| requests(q, "32", "10"),
            server: &[],
            kind: Kind::Requests,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "R3",
            about: "one request at a time (latency), 512 B up / 4 KB down",
            load: |q| requests(q, "1", "1"),
            server: &[],
            kind: Kind::Requests,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "R2M",
            about: "R2 as a production server runs it: a span per request (logging at INFO) and a Prometheus recorder installed (metrics recorded)",
            load: |q| requests(q, "32", "10"),
            server: &["--metrics-listen", "127.0.0.1:0"],
            kind: Kind::Requests,
            placement: Placement::Pinned,
            quay_only: true,
            spans: true,
        },
        Scenario {
            name: "R2S2",
            about: "R2 on a listener of 2 shards, on the server's one core: what sharding costs",
            load: |q| requests(q, "32", "10"),
            server: &["--shards", "2"],
            kind: Kind::Requests,
            placement: Placement::Pinned,
            quay_only: true,
            spans: false,
        },
        Scenario {
            name: "R2C1",
            about: "R2, 1 shard, server and load generator sharing both cores",
            load: |q| requests(q, "32", "10"),
            server: &["--shards", "1"],
            kind: Kind::Requests,
            placement: Placement::Shared,
            quay_only: true,
            spans: false,
        },
        Scenario {
            name: "R2C2",
            about: "R2, 2 shards, server and load generator sharing both cores",
            load: |q| requests(q, "32", "10"),
            server: &["--shards", "2"],
            kind: Kind::Requests,
            placement: Placement::Shared,
            quay_only: true,
            spans: false,
        },
        Scenario {
            name: "H1",
            about: "handshakes: fresh connection, one GET, close (no Retry)",
            load: handshakes,
            server: &[],
            kind: Kind::Handshakes,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "H1X",
            about: "handshakes as H1, the client offering X25519 alone: every server \
                    negotiates the same group",
            load: |q| handshakes_offering(q, "x25519"),
            // Each server at its defaults: all of them accept X25519.
            server: &[],
            kind: Kind::Handshakes,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "H1P256",
            about: "handshakes as H1, the client offering P-256 alone (ECDHE over \
                    secp256r1): the cost of the server's third group",
            load: |q| handshakes_offering(q, "p256"),
            server: &[],
            kind: Kind::Handshakes,
            placement: Placement::Pinned,
            quay_only: true,
            spans: false,
        },
        Scenario {
            name: "H1P384",
            about: "handshakes as H1, the client offering P-384 alone (ECDHE over \
                    secp384r1): the cost of the server's fourth group",
            load: |q| handshakes_offering(q, "p384"),
            server: &[],
            kind: Kind::Handshakes,
            placement: Placement::Pinned,
            quay_only: true,
            spans: false,
        },
        Scenario {
            name: "H1R",
            about: "handshakes as H1, every client validated with Retry",
            load: handshakes,
            server: &["--retry"],
            kind: Kind::Handshakes,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "M1",
            about: "server memory per idle connection (1k; 10k in full runs)",
            load: |q| {
                let n = if q { "200" } else { "1000" };
                s(&["--idle-connections", n, "--duration", "2"])
            },
            server: &[],
            kind: Kind::Idle,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
        Scenario {
            name: "M1-10k",
            about: "server memory per idle connection, 10k connections",
            load: |_| s(&["--idle-connections", "10000", "--duration", "2"]),
            server: &[],
            kind: Kind::Idle,
            placement: Placement::Pinned,
            quay_only: false,
            spans: false,
        },
    ]
}

fn requests(quick: bool, conns: &str, inflight: &str) -> Vec<String> {
    let (secs, warm) = if quick { ("1", "0.3") } else { ("10", "2") };
    s(&[
        "--connections",
        conns,
        "--inflight",
        inflight,
        "--request-size",
        "512",
        "--response-size",
        "4096",
        "--duration",
        secs,
        "--warmup",
        warm,
    ])
}

/// One GET of one byte per connection: not none, for a server of files (ngtcp2's)
/// has no empty ones.
/// Handshakes as [`handshakes`], the client offering `group` alone.
fn handshakes_offering(quick: bool, group: &str) -> Vec<String> {
    let mut args = handshakes(quick);
    args.extend(s(&["--key-exchange", group]));
    args
}

fn handshakes(quick: bool) -> Vec<String> {
    let secs = if quick { "1" } else { "10" };
    s(&[
        "--handshakes",
        "--connections",
        "8",
        "--response-size",
        "1",
        "--duration",
        secs,
    ])
}
