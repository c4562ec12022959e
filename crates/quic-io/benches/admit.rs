//! The router's cost per new connection: a client's first flight (its Initial
//! datagrams, each client with fresh connection IDs) routed through a listener's
//! router, which admits it and hands it on. Nothing else runs meanwhile, so what is
//! measured is the router alone.

use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quic_io::__private::RouterHarness;
use quic_io::{RetryPolicy, ServerParams, TlsConfig};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// New connections per measured batch.
const CLIENTS: usize = 64;

/// The datagrams a fresh client offering key-exchange `groups` sends first.
fn first_flight(server: SocketAddr, i: usize, groups: &str) -> Vec<Vec<u8>> {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION).expect("config");
    config.set_curves_list(groups).expect("groups");
    config.verify_peer(false);
    config.set_application_protos(&[b"h3"]).expect("alpn");
    config.set_initial_max_data(1 << 20);
    let scid_bytes: [u8; 16] = SmallRng::seed_from_u64(i as u64).random();
    let scid = quiche::ConnectionId::from_ref(&scid_bytes);
    let local = SocketAddr::from(([127, 0, 9, (i % 250) as u8 + 1], 40_000));
    let mut conn =
        quiche::connect(Some("localhost"), &scid, local, server, &mut config).expect("connect");
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((len, _)) = conn.send(&mut buf) {
        out.push(buf[..len].to_vec());
    }
    out
}

fn admit(c: &mut Criterion) {
    let identity = TlsConfig::self_signed(&["localhost"]).expect("certificate");
    let mut params = ServerParams::new(identity.config, &[b"h3"]);
    params.retry = RetryPolicy::Never;
    params.limits.max_handshakes_per_ip = usize::MAX;
    params.limits.max_connections_per_ip = usize::MAX;
    let server = SocketAddr::from(([127, 0, 0, 1], 4433));
    let mut group = c.benchmark_group("admit");
    group.throughput(Throughput::Elements(CLIENTS as u64));
    // The post-quantum hybrid's key share spreads a ClientHello over two datagrams;
    // X25519 alone fits one, so the whole ClientHello arrives with the first.
    for (name, groups) in [
        ("x25519mlkem768", "X25519MLKEM768:X25519"),
        ("x25519", "X25519"),
    ] {
        let flights: Vec<(SocketAddr, Vec<Vec<u8>>)> = (0..CLIENTS)
            .map(|i| {
                let from = SocketAddr::from(([127, 0, 9, (i % 250) as u8 + 1], 40_000));
                (from, first_flight(server, i, groups))
            })
            .collect();
        group.bench_function(name, |b| {
            b.iter_batched(
                || RouterHarness::new(params.clone()).expect("router"),
                |mut router| {
                    for (from, flight) in &flights {
                        for d in flight {
                            router.route(d, *from);
                        }
                    }
                    assert_eq!(router.connections(), CLIENTS);
                    router
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, admit);
criterion_main!(benches);
