//! DoQ over loopback UDP through `quay::doq`: a server from a zone, a client's
//! queries, and a second connection.

use std::str::FromStr;
use std::sync::Arc;

use quay::doq::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use quay::doq::proto::rr::{Name, RecordType};
use quay::doq::{Resolver, ServerLimits, Zone};
use quay::io::{ClientParams, ClientTlsConfig, TlsConfig};

const ZONE: &str = "\
$ORIGIN example.test.
$TTL 60
www IN A 192.0.2.10
www IN AAAA 2001:db8::10
";

fn query(name: &str, ty: RecordType) -> Message {
    let mut m = Message::new();
    m.set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_str(name).unwrap(), ty));
    m
}

/// A DoQ server of `ZONE` on loopback (0-RTT as asked), and client parameters that
/// trust it.
fn serve(early_data: bool) -> (std::net::SocketAddr, ClientParams) {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let mut server = quay::doq::server_params(identity.config);
    server.settings.enable_early_data = early_data;
    let listener = quay::io::listen_on("127.0.0.1:0".parse().unwrap(), server).unwrap();
    let addr = listener.local_addr();
    let resolver = Arc::new(Resolver::new(Some(Zone::parse(ZONE, None).unwrap()), None));
    tokio::spawn(quay::doq::serve(
        listener,
        resolver,
        ServerLimits::default(),
    ));
    let mut params = ClientParams::new(&[quay::doq::ALPN]);
    params.tls = ClientTlsConfig::new()
        .add_root_pem(identity.cert_pem.as_bytes())
        .unwrap();
    params.server_name = Some("localhost".into());
    params.settings.enable_early_data = early_data;
    (addr, params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doq_server_answers_over_udp() {
    let (addr, params) = serve(false);
    for _ in 0..2 {
        let (conn, handle) = quay::doq::connect(addr, params.clone()).await.unwrap();
        let a = handle
            .query(query("www.example.test.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(a.answers()[0].data().to_string(), "192.0.2.10");
        let aaaa = handle
            .query(query("www.example.test.", RecordType::AAAA))
            .await
            .unwrap();
        assert_eq!(aaaa.answers()[0].data().to_string(), "2001:db8::10");
        let nx = handle
            .query(query("no.example.test.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        assert_eq!(conn.handshake_info().unwrap().alpn, quay::doq::ALPN);
        conn.close(quay::doq::DOQ_NO_ERROR, b"").await;
    }
}

/// In 0-RTT only standard queries are answered (RFC 9250 §4.5): a NOTIFY sent as
/// early data gets REFUSED, the same NOTIFY after the handshake NOTIMP (the server
/// does not implement it), and a query in early data its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_carries_queries_only() {
    let (addr, mut params) = serve(true);
    let notify = || {
        let mut m = query("www.example.test.", RecordType::SOA);
        m.set_op_code(OpCode::Notify);
        m
    };

    // A first connection leaves a session ticket.
    let (conn, handle) = quay::doq::connect(addr, params.clone()).await.unwrap();
    let late = handle.query(notify()).await.unwrap();
    assert_eq!(late.response_code(), ResponseCode::NotImp);
    let ticket = async {
        loop {
            if let Some(t) = conn.session() {
                return t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let ticket = tokio::time::timeout(std::time::Duration::from_secs(5), ticket)
        .await
        .expect("a session ticket");
    conn.close(quay::doq::DOQ_NO_ERROR, b"").await;

    // The second resumes; its queries are queued before the handshake starts, so
    // they leave as early data.
    params.session = Some(ticket);
    let (app, handle) = quay::doq::DoqClient::new();
    let mut early_notify = Box::pin(handle.query(notify()));
    let mut early_query = Box::pin(handle.query(query("www.example.test.", RecordType::A)));
    // Polled once: each query is handed to the app (a timeout polls its future before
    // it looks at the clock).
    let zero = std::time::Duration::ZERO;
    assert!(tokio::time::timeout(zero, &mut early_notify).await.is_err());
    assert!(tokio::time::timeout(zero, &mut early_query).await.is_err());
    let conn = quay::io::connect(addr, params, app).await.unwrap();
    let refused = early_notify.await.unwrap();
    let answered = early_query.await.unwrap();
    let info = conn.established().await.unwrap();
    assert!(info.resumed && info.early_data_accepted, "{info:?}");
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    assert_eq!(answered.answers()[0].data().to_string(), "192.0.2.10");
    conn.close(quay::doq::DOQ_NO_ERROR, b"").await;
}
