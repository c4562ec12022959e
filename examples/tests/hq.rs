//! The hq-interop protocol in the in-memory harness: files, many streams, loss.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quay::app::testing::{Pair, PairConfig};
use quay_examples::hq::{ALPN, Download, HqClient, HqServer};

/// A fresh directory under the system's temporary one, removed when dropped (also when
/// the test fails).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("quay-hq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + seed * 13) % 251) as u8)
        .collect()
}

async fn fetch(
    config: PairConfig,
    www: &std::path::Path,
    out: &std::path::Path,
    names: &[String],
) -> Vec<quay_examples::hq::DownloadResult> {
    let downloads = names
        .iter()
        .enumerate()
        .map(|(i, n)| Download {
            path: format!("/{n}"),
            // Never a name from the list: some climb out of the directory on purpose.
            output: out.join(format!("out{i}")),
        })
        .collect();
    let (client, report) = HqClient::new(downloads);
    let server = HqServer::new(Arc::new(www.to_path_buf()));
    let mut pair = Pair::new(config, client, server).unwrap();
    pair.run_until_closed(Duration::from_secs(60))
        .await
        .unwrap();
    report.await.unwrap()
}

#[tokio::test]
async fn files_of_every_size_arrive_intact_over_a_lossy_link() {
    let (www, out) = (dir("www1"), dir("out1"));
    let sizes = [0, 1, 1200, 100_000, 2 * 1024 * 1024, 5 * 1024 * 1024];
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("f{i}.bin")).collect();
    for (i, len) in sizes.iter().enumerate() {
        std::fs::write(www.join(&names[i]), content(i, *len)).unwrap();
    }
    let config = PairConfig::new(ALPN).loss(0.02).seed(7);
    let results = fetch(config, &www, &out, &names).await;
    assert_eq!(results.len(), sizes.len());
    for r in &results {
        assert_eq!(r.error, None, "{r:?}");
    }
    for (i, len) in sizes.iter().enumerate() {
        let got = std::fs::read(out.join(format!("out{i}"))).unwrap();
        assert_eq!(got.len(), *len);
        assert!(got == content(i, *len), "{} differs", names[i]);
    }
}

#[tokio::test]
async fn more_files_than_the_stream_limit_all_arrive() {
    let (www, out) = (dir("www2"), dir("out2"));
    let names: Vec<String> = (0..450).map(|i| format!("small{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        std::fs::write(www.join(n), content(i, 32 + i)).unwrap();
    }
    // The server allows 100 streams at once; the client waits for MAX_STREAMS.
    let config = PairConfig::new(ALPN).configure(|c| c.set_initial_max_streams_bidi(100));
    let results = fetch(config, &www, &out, &names).await;
    assert_eq!(results.iter().filter(|r| r.error.is_none()).count(), 450);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            std::fs::read(out.join(format!("out{i}"))).unwrap(),
            content(i, 32 + i),
            "{n}"
        );
    }
}

#[tokio::test]
async fn a_missing_file_or_a_path_outside_the_root_is_an_error_not_a_file() {
    let (www, out) = (dir("www3"), dir("out3"));
    std::fs::write(www.join("present"), b"here").unwrap();
    let names = vec![
        "present".to_owned(),
        "absent".to_owned(),
        "../../etc/passwd".to_owned(),
    ];
    let results = fetch(PairConfig::new(ALPN), &www, &out, &names).await;
    let by_path = |p: &str| results.iter().find(|r| r.path == p).unwrap().clone();
    assert_eq!(by_path("/present").error, None);
    assert_eq!(by_path("/present").bytes, 4);
    assert!(by_path("/absent").error.unwrap().contains("reset"));
    assert!(
        by_path("/../../etc/passwd")
            .error
            .unwrap()
            .contains("reset")
    );
}
