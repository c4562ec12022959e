//! DoQ server and client in memory: answers from a zone and from an upstream (UDP and
//! TCP), and every protocol error closing the connection with DOQ_PROTOCOL_ERROR.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use quic_app::testing::{Pair, PairConfig};
use quic_app::{AppError, ApplicationOverQuic, HandshakeInfo, QuicConnection};
use quic_doq::{
    DOQ_EXCESSIVE_LOAD, DOQ_PROTOCOL_ERROR, DoqClient, DoqServer, QueryError, Resolver,
    ServerLimits, Upstream, Zone,
};

const LIMIT: Duration = Duration::from_secs(30);

const ZONE: &str = include_str!("../testdata/example.test.zone");

fn zone_resolver(upstream: Option<Upstream>) -> Arc<Resolver> {
    Arc::new(Resolver::new(
        Some(Zone::parse(ZONE, None).unwrap()),
        upstream,
    ))
}

fn query(name: &str, ty: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(4321)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_str(name).unwrap(), ty));
    m
}

fn pair<C: ApplicationOverQuic>(client: C, server: DoqServer) -> Pair<C, DoqServer> {
    Pair::new(PairConfig::new(quic_doq::ALPN), client, server).unwrap()
}

fn rdata(m: &Message) -> Vec<String> {
    m.answers().iter().map(|r| r.data().to_string()).collect()
}

#[tokio::test]
async fn queries_are_answered_from_the_zone() {
    let (client, handle) = DoqClient::new();
    let mut pair = pair(
        client,
        DoqServer::new(zone_resolver(None), ServerLimits::default()),
    );
    let answers = pair
        .run_with(LIMIT, async {
            let a = handle
                .query(query("www.example.test.", RecordType::A))
                .await
                .unwrap();
            let aaaa = handle
                .query(query("www.example.test.", RecordType::AAAA))
                .await
                .unwrap();
            let txt = handle
                .query(query("txt.example.test.", RecordType::TXT))
                .await
                .unwrap();
            let nx = handle
                .query(query("nope.example.test.", RecordType::A))
                .await
                .unwrap();
            let nodata = handle
                .query(query("txt.example.test.", RecordType::A))
                .await
                .unwrap();
            let refused = handle
                .query(query("www.example.org.", RecordType::A))
                .await
                .unwrap();
            // Many at once, each on a stream of its own.
            let many = futures_join(&handle, 40).await;
            (a, aaaa, txt, nx, nodata, refused, many)
        })
        .await
        .unwrap();
    let (a, aaaa, txt, nx, nodata, refused, many) = answers;
    for m in [&a, &aaaa, &txt, &nx, &nodata, &refused] {
        assert_eq!(m.id(), 0, "DoQ messages carry ID 0");
        assert_eq!(m.message_type(), MessageType::Response);
    }
    assert_eq!(a.response_code(), ResponseCode::NoError);
    assert!(a.authoritative());
    assert_eq!(rdata(&a), ["192.0.2.10"]);
    assert_eq!(rdata(&aaaa), ["2001:db8::10"]);
    match txt.answers()[0].data() {
        RData::TXT(t) => assert_eq!(
            t.txt_data(),
            [
                b"hello".to_vec().into_boxed_slice(),
                b"world".to_vec().into_boxed_slice()
            ]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    assert_eq!(nx.name_servers()[0].record_type(), RecordType::SOA);
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    assert_eq!(refused.response_code(), ResponseCode::Refused);
    assert_eq!(many, 40);
}

/// Sends `n` queries at once; how many came back right.
async fn futures_join(handle: &quic_doq::QueryHandle, n: usize) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let h = handle.clone();
        set.spawn(async move { h.query(query("www.example.test.", RecordType::A)).await });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        if rdata(&r.unwrap().unwrap()) == ["192.0.2.10"] {
            ok += 1;
        }
    }
    ok
}

/// A fake upstream: answers `up.example.org.` A with 198.51.100.7 after `delay`; with
/// `truncate`, over UDP only a truncated answer, the full one over TCP.
async fn upstream(delay: Duration, truncate: bool) -> SocketAddr {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let answer = |q: &Message, tc: bool| {
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .set_truncated(tc)
            .add_query(q.queries()[0].clone());
        if !tc {
            m.add_answer(Record::from_rdata(
                Name::from_str("up.example.org.").unwrap(),
                60,
                RData::A("198.51.100.7".parse().unwrap()),
            ));
        }
        m.to_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            tokio::time::sleep(delay).await;
            let _ = udp.send_to(&answer(&q, truncate), from).await;
        }
    });
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = tcp.accept().await {
            let len = s.read_u16().await.unwrap() as usize;
            let mut buf = vec![0u8; len];
            s.read_exact(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf).unwrap();
            let a = answer(&q, false);
            s.write_all(&(a.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&a).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn names_outside_the_zone_are_forwarded_over_udp_and_tcp() {
    for truncate in [false, true] {
        let up = upstream(Duration::ZERO, truncate).await;
        let (client, handle) = DoqClient::new();
        let server = DoqServer::new(
            zone_resolver(Some(Upstream::new(up))),
            ServerLimits::default(),
        );
        let mut pair = pair(client, server);
        let (up_answer, zone_answer) = pair
            .run_with(LIMIT, async {
                let u = handle
                    .query(query("up.example.org.", RecordType::A))
                    .await
                    .unwrap();
                let z = handle
                    .query(query("www.example.test.", RecordType::A))
                    .await
                    .unwrap();
                (u, z)
            })
            .await
            .unwrap();
        assert_eq!(up_answer.id(), 0);
        assert_eq!(rdata(&up_answer), ["198.51.100.7"], "truncate {truncate}");
        assert!(up_answer.recursion_available());
        assert_eq!(rdata(&zone_answer), ["192.0.2.10"]);
    }
    // A dead upstream: SERVFAIL once its time is up.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = Upstream::new(dead.local_addr().unwrap()).with_timeout(Duration::from_millis(200));
    let (client, handle) = DoqClient::new();
    let mut pair = pair(
        client,
        DoqServer::new(zone_resolver(Some(up)), ServerLimits::default()),
    );
    let a = pair
        .run_with(LIMIT, handle.query(query("up.example.org.", RecordType::A)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.response_code(), ResponseCode::ServFail);
}

#[tokio::test]
async fn queries_beyond_the_in_flight_limit_are_reset_with_excessive_load() {
    let up = upstream(Duration::from_millis(300), false).await;
    let (client, handle) = DoqClient::new();
    let mut limits = ServerLimits::default();
    limits.max_in_flight = 1;
    let server = DoqServer::new(zone_resolver(Some(Upstream::new(up))), limits);
    let mut pair = pair(client, server);
    let (slow, second) = pair
        .run_with(LIMIT, async {
            let h = handle.clone();
            let slow =
                tokio::spawn(async move { h.query(query("up.example.org.", RecordType::A)).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let second = handle
                .query(query("www.example.test.", RecordType::A))
                .await;
            (slow.await.unwrap(), second)
        })
        .await
        .unwrap();
    assert_eq!(rdata(&slow.unwrap()), ["198.51.100.7"]);
    assert_eq!(second.unwrap_err(), QueryError::Reset(DOQ_EXCESSIVE_LOAD));
}

/// Bytes to write on a stream, and whether to finish it.
type RawStream = (u64, Vec<u8>, bool);

/// Writes raw bytes on streams once the handshake completes.
struct Raw(Vec<RawStream>);

impl Raw {
    fn send(&mut self, conn: &mut QuicConnection) {
        for (id, data, fin) in &mut self.0 {
            if data.is_empty() && !*fin {
                continue;
            }
            if let Ok(n) = conn.stream_send(*id, data, *fin) {
                data.drain(..n);
                if data.is_empty() {
                    *fin = false;
                }
            }
        }
    }
}

impl ApplicationOverQuic for Raw {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.send(conn);
        Ok(())
    }
    fn process_reads(&mut self, _: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.send(conn);
        Ok(())
    }
}

fn framed(m: &Message) -> Vec<u8> {
    let wire = m.to_vec().unwrap();
    let mut out = (wire.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&wire);
    out
}

#[tokio::test]
async fn protocol_errors_close_the_connection_with_doq_protocol_error() {
    let mut id_zero = query("www.example.test.", RecordType::A);
    id_zero.set_id(0);
    let ok = framed(&id_zero);
    let nonzero_id = framed(&query("www.example.test.", RecordType::A));
    let two = [ok.clone(), ok.clone()].concat();
    let mut keepalive = id_zero.clone();
    keepalive
        .extensions_mut()
        .get_or_insert_with(Default::default)
        .options_mut()
        .insert(EdnsOption::Unknown(
            u16::from(EdnsCode::Keepalive),
            vec![0, 10],
        ));
    let cases: Vec<(&str, Vec<RawStream>)> = vec![
        ("a message ID other than 0", vec![(0, nonzero_id, true)]),
        ("two messages on one stream", vec![(0, two, true)]),
        (
            "the stream ends inside the message",
            vec![(0, ok[..ok.len() - 3].to_vec(), true)],
        ),
        (
            "a length beyond the data",
            vec![(0, vec![0xff, 0xff, 0, 0], true)],
        ),
        ("a unidirectional stream", vec![(2, ok.clone(), true)]),
        (
            "more bytes than the largest DoQ message",
            vec![(0, [vec![0xff, 0xff], vec![0; 65_600]].concat(), true)],
        ),
        ("edns-tcp-keepalive", vec![(0, framed(&keepalive), true)]),
    ];
    for (what, streams) in cases {
        let mut pair = pair(
            Raw(streams),
            DoqServer::new(zone_resolver(None), ServerLimits::default()),
        );
        pair.run_until_closed(LIMIT).await.unwrap();
        let reason = pair.client().close_reason().unwrap();
        assert_eq!(
            reason.app_code(),
            Some(DOQ_PROTOCOL_ERROR),
            "{what}: {reason:?}"
        );
    }
    // A query that is not a DNS message is a DNS error, answered with FORMERR.
    let (client, _handle) = DoqClient::new();
    drop(client);
    let garbage = [vec![0, 6], vec![0, 0, 0xff, 0xff, 0xff, 0xff]].concat();
    let mut pair = pair(
        Raw(vec![(0, garbage, true)]),
        DoqServer::new(zone_resolver(None), ServerLimits::default()),
    );
    pair.run_until(LIMIT, |p| p.client().conn().stream_readable(0))
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = pair
        .client_mut()
        .conn_mut()
        .stream_recv(0, &mut buf)
        .unwrap();
    let m = Message::from_vec(&buf[2..n]).unwrap_or_else(|e| panic!("{e}: {:02x?}", &buf[..n]));
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    assert!(pair.client().close_reason().is_none());
}
