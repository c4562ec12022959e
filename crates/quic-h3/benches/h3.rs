//! HTTP/3 requests through the in-memory harness: both drivers, quiche and the
//! request/response handles, without sockets. A GET for 4 KB, one at a time (bare,
//! and with the fields a browser sends) and 100 at once.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quic_app::testing::{Pair, PairConfig};
use quic_h3::{ClientH3Driver, H3Settings, RequestStream, SendRequest, ServerH3Driver};

#[path = "../tests/it/browser_fields.rs"]
mod browser_fields;
use browser_fields::BROWSER_FIELDS;

const LIMIT: Duration = Duration::from_secs(30);
const RESPONSE: usize = 4096;

/// Answers every request with 4 KB.
async fn serve(mut requests: RequestStream) {
    let body = Bytes::from(vec![0x42; RESPONSE]);
    while let Some(req) = requests.next().await {
        let body = body.clone();
        tokio::spawn(async move {
            let resp = http::Response::builder().status(200).body(()).unwrap();
            let mut out = req.responder.send_response(resp).await?;
            out.send_data(body).await?;
            out.finish().await
        });
    }
}

async fn get(send: &SendRequest) -> usize {
    let req = http::Request::get("https://localhost/bytes/4096")
        .body(Bytes::new())
        .unwrap();
    fetch(send, req).await
}

/// A GET with the fields a browser sends on a navigation.
async fn get_browser(send: &SendRequest) -> usize {
    let mut req = http::Request::get("https://localhost/bytes/4096");
    for (name, value) in BROWSER_FIELDS {
        req = req.header(name, value);
    }
    fetch(send, req.body(Bytes::new()).unwrap()).await
}

async fn fetch(send: &SendRequest, req: http::Request<Bytes>) -> usize {
    let mut resp = send.send(req).await.expect("response");
    resp.body_mut().collect(RESPONSE).await.expect("body").len()
}

fn requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    // One connection carries every iteration's requests: far more than the default
    // limit per connection, which would end it mid-run.
    let mut settings = H3Settings::default();
    settings.max_requests_per_connection = None;
    let (server, requests) = ServerH3Driver::new(settings);
    // Streams are spent per request: allow plenty for all iterations.
    let config = PairConfig::new(quic_h3::ALPN).configure(|c| {
        c.set_initial_max_streams_bidi(1_000_000);
    });
    let mut pair: Pair<ClientH3Driver, ServerH3Driver> =
        Pair::new(config, client, server).expect("pair");
    rt.spawn(serve(requests));
    // The benchmark must carry real responses.
    let first = rt.block_on(pair.run_with(LIMIT, get(&send))).expect("run");
    assert_eq!(first, RESPONSE);

    let mut group = c.benchmark_group("h3_in_memory");
    group.throughput(Throughput::Elements(1));
    group.bench_function("get_4KB_one_at_a_time", |b| {
        b.iter(|| {
            let n = rt.block_on(pair.run_with(LIMIT, get(&send))).expect("run");
            black_box(n)
        })
    });
    group.bench_function("get_4KB_browser_fields_one_at_a_time", |b| {
        b.iter(|| {
            let n = rt
                .block_on(pair.run_with(LIMIT, get_browser(&send)))
                .expect("run");
            black_box(n)
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("get_4KB_100_concurrent", |b| {
        b.iter(|| {
            let total = rt
                .block_on(pair.run_with(LIMIT, async {
                    let mut all = tokio::task::JoinSet::new();
                    for _ in 0..100 {
                        let send = send.clone();
                        all.spawn(async move { get(&send).await });
                    }
                    let mut sum = 0;
                    while let Some(n) = all.join_next().await {
                        sum += n.expect("request task");
                    }
                    sum
                }))
                .expect("run");
            assert_eq!(total, 100 * RESPONSE);
            total
        })
    });
    group.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
