//! Each request runs in a `request` span, a child of its connection's `quic_conn`
//! span, with its method, path, status and duration recorded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use quay::h3::Body;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

mod common;

/// The fields of every `request` span, and its parent's name.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "request" {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned())
            .unwrap_or_default();
        fields.insert("parent".into(), parent);
        self.0.lock().unwrap().insert(id.into_u64(), fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(fields) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_has_a_span_under_its_connection_with_status_and_duration() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();

    let (server, cert_pem) = common::loopback_server();
    let port = server.local_addr().port();
    tokio::spawn(
        server.serve(|req: http::Request<quay::h3::RecvBody>| async move {
            let mut resp = http::Response::new(Body::from("x"));
            if req.uri().path() == "/teapot" {
                *resp.status_mut() = http::StatusCode::IM_A_TEAPOT;
            }
            Ok::<_, Infallible>(resp)
        }),
    );
    let client = common::client_trusting(&cert_pem);
    for path in ["/a", "/teapot"] {
        let mut resp = client
            .get(&format!("https://localhost:{port}{path}"))
            .await
            .unwrap();
        resp.body_mut().collect(16).await.unwrap();
    }
    // The status is recorded once the response has gone out: wait for both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<HashMap<String, String>> =
            capture.0.lock().unwrap().values().cloned().collect();
        if spans.len() == 2 && spans.iter().all(|s| s.contains_key("ms")) {
            break spans;
        }
        assert!(std::time::Instant::now() < deadline, "{spans:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut seen: Vec<(String, String, String, String)> = spans
        .iter()
        .map(|s| {
            assert!(s["ms"].parse::<f64>().unwrap() >= 0.0, "{s:?}");
            (
                s["parent"].clone(),
                s["method"].clone(),
                s["path"].clone(),
                s["status"].clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("quic_conn".into(), "GET".into(), "/a".into(), "200".into()),
            (
                "quic_conn".into(),
                "GET".into(),
                "/teapot".into(),
                "418".into()
            ),
        ]
    );
}
