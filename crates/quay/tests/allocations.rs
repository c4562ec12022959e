//! What a server allocates per request, counted by this test binary's allocator: a
//! request's future is hardly larger than its handler's, a busy connection allocates
//! it once, not per request, and gives it back to the server once it has no request
//! open; the server keeps a bounded few for its other connections.

// The counting allocator below is a `GlobalAlloc`, an unsafe trait; it only counts and
// hands every call to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quay::h3::Body;

mod common;

/// Bytes the handler's future carries: it makes a request's future far larger than
/// anything else either side allocates, so allocations of its size are its own.
const PAD: usize = 40_000;

/// Whether an allocation of `size` bytes is a request's future.
fn is_request_future(size: usize) -> bool {
    (PAD..PAD + 4096).contains(&size)
}

/// Request futures allocated, and those not yet freed; the largest one's size.
static MADE: AtomicUsize = AtomicUsize::new(0);
static SIZE: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call goes to `System` with the caller's own arguments; the counters
// beside it allocate nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_request_future(layout.size()) {
            MADE.fetch_add(1, Ordering::SeqCst);
            SIZE.fetch_max(layout.size(), Ordering::SeqCst);
            LIVE.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: the caller's contract for `alloc` is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_request_future(layout.size()) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: `ptr` came from `alloc` above, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests sent together on one connection.
const REQUESTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_reuses_its_request_future_and_an_idle_one_gives_it_back() {
    let (server, cert_pem) = common::loopback_server();
    let addr = server.local_addr();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    tokio::spawn(server.serve(move |req: http::Request<quay::h3::RecvBody>| {
        let pad = [7u8; PAD];
        let wait = (req.uri().path() == "/wait").then(|| released.clone());
        if wait.is_some()
            && let Some(tx) = entered_tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
        async move {
            // Every handler but /wait's answers at once, in its connection's task.
            if let Some(release) = wait {
                release.notified().await;
            }
            let seven = std::hint::black_box(&pad)[PAD - 1];
            let body = Bytes::from(vec![seven; 2]);
            Ok::<_, Infallible>(http::Response::new(Body::from(body)))
        }
    }));

    let (conn, send) = common::connect(addr, &cert_pem).await;
    let get = |path: &'static str| {
        let send = send.clone();
        async move { common::get(&send, path).await.unwrap() }
    };

    let live_before = LIVE.load(Ordering::SeqCst);
    let made_before = MADE.load(Ordering::SeqCst);
    // A request that waits keeps the connection busy throughout: its future goes to
    // a task of its own, in its own allocation.
    let waiting = tokio::spawn(get("/wait"));
    let started = tokio::time::timeout(Duration::from_secs(10), entered).await;
    assert!(
        matches!(started, Ok(Ok(()))),
        "the waiting request reached its handler"
    );

    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        requests.spawn(get("/"));
    }
    let answers = tokio::time::timeout(Duration::from_secs(30), requests.join_all())
        .await
        .expect("requests finish");
    assert_eq!(answers.len(), REQUESTS);
    assert!(answers.iter().all(|a| a[..] == [7, 7]), "{answers:?}");
    let made = MADE.load(Ordering::SeqCst) - made_before;
    println!("{made} request futures allocated for 1 waiting and {REQUESTS} other requests");
    // The server's part beside the handler's future: the request's span, what its
    // answer needs, the phase it is in, and the room the request waits in until its
    // call (filled in place for each request; empty once called). The answer's
    // futures are not kept beside the handler's.
    let overhead = SIZE.load(Ordering::SeqCst) - PAD;
    println!("a request's future is its handler's {PAD} bytes and {overhead} more");
    assert!(
        overhead < 1024,
        "{overhead} bytes besides the handler's future"
    );
    // The waiting request's, and one for all the others.
    assert_eq!(
        made, 2,
        "request futures allocated for 1 waiting and {REQUESTS} other requests on one connection"
    );

    release.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting request finishes")
        .unwrap();
    assert_eq!(answer, [7, 7][..]);
    // Its requests done, the connection (still open) gives its two back to the
    // server, which keeps 64 KiB of them at most: one of this size.
    let kept = tokio::time::timeout(Duration::from_secs(10), async {
        while LIVE.load(Ordering::SeqCst) != live_before + 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        kept.is_ok(),
        "{} request futures still allocated with the connection idle, 1 expected",
        LIVE.load(Ordering::SeqCst) - live_before
    );
    assert!(!conn.is_closed(), "the connection stayed open");

    // Another connection's requests, one after another (so it falls idle between
    // them), run in the one the server kept: none is allocated.
    let made_before = MADE.load(Ordering::SeqCst);
    let (other, send) = common::connect(addr, &cert_pem).await;
    for _ in 0..5 {
        assert_eq!(common::get(&send, "/").await.unwrap(), [7, 7][..]);
    }
    assert_eq!(
        MADE.load(Ordering::SeqCst) - made_before,
        0,
        "request futures allocated for 5 requests with one kept"
    );
    assert_eq!(LIVE.load(Ordering::SeqCst), live_before + 1);
    assert!(!other.is_closed() && !conn.is_closed());
}
