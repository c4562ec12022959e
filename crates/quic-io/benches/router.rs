//! The router's per-datagram step: parse the header, look the destination connection
//! ID up among 10,000 connections (two IDs each, as quiche keeps a spare).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quic_io::__private::RouteTable;
use rand::{Rng, SeedableRng, rngs::SmallRng};

const CONNECTIONS: u64 = 10_000;
const CID_LEN: usize = quic_io::DEFAULT_CID_LEN;
const DATAGRAMS: usize = 1024;

/// A 1-RTT (short header) datagram to `dcid`.
fn short_packet(dcid: &[u8]) -> Vec<u8> {
    let mut d = vec![0x43];
    d.extend_from_slice(dcid);
    d.resize(1200, 0xaa);
    d
}

fn lookup(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut table = RouteTable::default();
    let mut cids = Vec::new();
    for id in 0..CONNECTIONS {
        for _ in 0..2 {
            let cid: [u8; CID_LEN] = rng.random();
            table.insert(&cid, id);
            cids.push(cid);
        }
    }
    let hits: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|_| short_packet(&cids[rng.random_range(0..cids.len())]))
        .collect();
    let misses: Vec<Vec<u8>> = (0..DATAGRAMS)
        .map(|_| short_packet(&rng.random::<[u8; CID_LEN]>()))
        .collect();
    // The benchmark must measure real routes: every hit finds its connection.
    assert!(hits.iter().all(|d| table.route(d, CID_LEN).is_some()));
    assert!(misses.iter().all(|d| table.route(d, CID_LEN).is_none()));

    let mut group = c.benchmark_group("router_lookup_10k_connections");
    group.throughput(Throughput::Elements(DATAGRAMS as u64));
    group.bench_function("known_dcid", |b| {
        b.iter(|| {
            for d in &hits {
                black_box(table.route(black_box(d), CID_LEN));
            }
        })
    });
    group.bench_function("unknown_dcid", |b| {
        b.iter(|| {
            for d in &misses {
                black_box(table.route(black_box(d), CID_LEN));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
