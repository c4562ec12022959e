//! The benchmark routes on tokio-quiche 0.20: `ServerH3Driver`, one task per
//! connection reading its events, one task per request.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use quay_bench_peers::{Args, FILL, Route, route_of_fields};
use quiche::h3::Header;
use tokio::net::UdpSocket;
use tokio_quiche::http3::driver::{
    H3Event, InboundFrame, IncomingH3Headers, OutboundFrame, OutboundFrameSender, ServerH3Event,
};
use tokio_quiche::http3::settings::Http3Settings;
use tokio_quiche::metrics::DefaultMetrics;
use tokio_quiche::settings::{CertificateKind, Hooks, QuicSettings, TlsCertificatePaths};
use tokio_quiche::{ConnectionParams, ServerH3Driver};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let socket = UdpSocket::bind(args.listen).await?;
    let addr = socket.local_addr()?;
    let mut settings = QuicSettings::default();
    settings.disable_client_ip_validation = !args.retry;
    let cert = args.cert.to_string_lossy().into_owned();
    let key = args.key.to_string_lossy().into_owned();
    let params = ConnectionParams::new_server(
        settings,
        TlsCertificatePaths {
            cert: &cert,
            private_key: &key,
            kind: CertificateKind::X509,
        },
        Hooks::default(),
    );
    let mut listeners = tokio_quiche::listen([socket], params, DefaultMetrics)?;
    println!("listening on {addr}");
    let conns = &mut listeners[0];
    while let Some(conn) = conns.next().await {
        let Ok(conn) = conn else { continue };
        let (driver, mut controller) = ServerH3Driver::new(Http3Settings::default());
        conn.start(driver);
        tokio::spawn(async move {
            let events = controller.event_receiver_mut();
            while let Some(event) = events.recv().await {
                match event {
                    ServerH3Event::Headers {
                        incoming_headers, ..
                    } => {
                        tokio::spawn(serve(incoming_headers));
                    }
                    ServerH3Event::Core(H3Event::ConnectionShutdown(_))
                    | ServerH3Event::Core(H3Event::ConnectionError(_)) => break,
                    ServerH3Event::Core(_) => {}
                }
            }
        });
    }
    Ok(())
}

async fn serve(req: IncomingH3Headers) {
    let IncomingH3Headers {
        headers,
        send: mut tx,
        recv: mut rx,
        read_fin,
        ..
    } = req;
    let route = route_of_fields(&headers);
    let mut received = 0u64;
    if !read_fin {
        while let Some(frame) = rx.recv().await {
            if let InboundFrame::Body(data, fin) = frame {
                received += data.len() as u64;
                if fin {
                    break;
                }
            }
        }
    }
    let _ = respond(&mut tx, route, received).await;
}

async fn respond(tx: &mut OutboundFrameSender, route: Route, received: u64) -> Option<()> {
    let (status, body): (&[u8], Body) = match route {
        Route::Bytes(n) => (b"200", Body::Fill(n)),
        Route::Upload => (b"200", Body::Text(received.to_string())),
        Route::NotFound => (b"404", Body::Fill(0)),
    };
    let mut headers = vec![Header::new(b":status", status)];
    if let Route::Bytes(n) = route {
        // As quay's h3-server does: the responses carry the same fields.
        headers.push(Header::new(b"content-length", n.to_string().as_bytes()));
    }
    tx.send(OutboundFrame::Headers(headers, None)).await.ok()?;
    match body {
        Body::Fill(mut n) => loop {
            // An empty body still needs its FIN.
            let len = n.min(FILL.len() as u64) as usize;
            n -= len as u64;
            let chunk = Bytes::from_static(&FILL[..len]);
            tx.send(OutboundFrame::Body(chunk, n == 0)).await.ok()?;
            if n == 0 {
                return Some(());
            }
        },
        Body::Text(t) => tx
            .send(OutboundFrame::Body(Bytes::from(t), true))
            .await
            .ok(),
    }
}

enum Body {
    Fill(u64),
    Text(String),
}
