//! GSO batch assembly: a connection with 1 MiB to send and the congestion window open,
//! packed into batches the way a worker packs them before `sendmsg`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quic_app::testing::{Idle, Pair, PairConfig};
use quic_io::__private::GsoBatches;

const BYTES: usize = 1024 * 1024;
const MAX_PAYLOAD: usize = 1350;
/// What Linux's UDP GSO takes per call (quinn-udp reports 64).
const SEGMENTS: usize = 64;

/// An established pair whose server has 1 MiB queued on a stream, with windows and a
/// congestion window wide enough to send all of it at once.
fn loaded(rt: &tokio::runtime::Runtime, data: &[u8]) -> Pair<Idle, Idle> {
    let config = PairConfig::new(b"bench").configure(|c| {
        c.set_initial_max_data(8 * BYTES as u64);
        c.set_initial_max_stream_data_bidi_local(4 * BYTES as u64);
        c.set_initial_max_stream_data_bidi_remote(4 * BYTES as u64);
        c.set_initial_congestion_window_packets(2000);
    });
    let mut pair = Pair::new(config, Idle, Idle).expect("pair");
    rt.block_on(pair.run_until_established(Duration::from_secs(10)))
        .expect("handshake");
    let conn = pair.server_mut().conn_mut();
    let written = conn.stream_send(1, data, true).expect("stream_send");
    assert_eq!(written, data.len(), "the windows take the whole body");
    pair
}

fn gso(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let data = vec![0x5a; BYTES];
    // The benchmark must move the whole body, in full batches.
    let mut check = loaded(&rt, &data);
    let (batches, bytes) =
        GsoBatches::new(MAX_PAYLOAD, SEGMENTS).drain(check.server_mut().conn_mut());
    assert!(bytes > BYTES, "sent {bytes} bytes");
    assert!(
        batches <= bytes / (MAX_PAYLOAD * 40) + 2,
        "{batches} batches for {bytes} bytes"
    );

    let mut group = c.benchmark_group("gso_batch_assembly");
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.sample_size(30);
    for (name, segments) in [("1MiB_stream", SEGMENTS), ("1MiB_stream_no_gso", 1)] {
        group.bench_function(name, |b| {
            let mut batcher = GsoBatches::new(MAX_PAYLOAD, segments);
            b.iter_batched(
                || loaded(&rt, &data),
                |mut pair| {
                    black_box(batcher.drain(pair.server_mut().conn_mut()));
                    pair
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, gso);
criterion_main!(benches);
