//! The fields a browser sends with a navigation request: a realistic request head for
//! the tests and the benchmarks.

/// Chromium's fields on a top-level navigation, in its order.
pub(crate) const BROWSER_FIELDS: [(&str, &str); 12] = [
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en;q=0.9"),
    ("cache-control", "max-age=0"),
    ("cookie", "session=4f1c2a9e7b3d; theme=dark"),
    ("priority", "u=0, i"),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-fetch-dest", "document"),
    ("upgrade-insecure-requests", "1"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
];
