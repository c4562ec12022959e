//! Extended CONNECT (RFC 9220) on the server's paved path: a handler takes the
//! request's tunnel from its extensions, answers 2xx, and gets the stream's parts once
//! the response head is out.

use std::sync::{Arc, Mutex};

use quic_h3::{DatagramFlow, DatagramTunnel, RecvBody, SendBody};
use tokio::sync::oneshot;

/// In the extensions of every extended CONNECT request [`Server`](super::Server) hands
/// a handler: the way to the stream's tunnel. Take it with [`take`](Self::take) and
/// answer 2xx; the server then sends the response head and, instead of the response's
/// body (which is not sent), hands the stream to the [`OnConnect`].
///
/// Not taken, or answered with another status, the request is an ordinary one: the
/// response goes out with its body and the stream's datagrams are dropped.
///
/// ```no_run
/// use quay::h3::{Body, ConnectUpgrade, RecvBody};
///
/// async fn handler(req: http::Request<RecvBody>) -> http::Response<Body> {
///     let Some(on) = req.extensions().get::<ConnectUpgrade>().and_then(ConnectUpgrade::take)
///     else {
///         return http::Response::builder().status(400).body(Body::empty()).unwrap();
///     };
///     let recv = req.into_body();
///     tokio::spawn(async move {
///         let Ok(mut tunnel) = on.tunnel(recv).await else { return };
///         // Echo every HTTP Datagram until the client ends the stream.
///         while let Ok(Some(d)) = tunnel.recv().await {
///             if tunnel.send(d).await.is_err() {
///                 return;
///             }
///         }
///         let _ = tunnel.close().await;
///     });
///     http::Response::builder()
///         .header("capsule-protocol", "?1")
///         .body(Body::empty())
///         .unwrap()
/// }
/// # let _ = handler;
/// ```
#[derive(Debug, Clone)]
pub struct ConnectUpgrade(Arc<Mutex<Option<OnConnect>>>);

impl ConnectUpgrade {
    /// The request's tunnel, to the first caller.
    pub fn take(&self) -> Option<OnConnect> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// An extended CONNECT stream a handler took: its datagrams now, its sending half once
/// the server has sent a 2xx response head.
#[derive(Debug)]
pub struct OnConnect {
    datagrams: DatagramFlow,
    send: oneshot::Receiver<SendBody>,
}

/// Why an extended CONNECT stream did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The handler answered with a status other than 2xx, or the response head could
    /// not be sent (the stream or connection ended).
    #[error("the CONNECT stream was not opened: no 2xx response went out")]
    NotOpened,
}

impl OnConnect {
    /// The stream's HTTP Datagrams, before the response goes out (RFC 9298 lets a
    /// client send some early).
    pub fn datagrams(&mut self) -> &mut DatagramFlow {
        &mut self.datagrams
    }

    /// Once the 2xx response head is sent: the stream's datagrams and its sending
    /// half. The receiving half is the request's body.
    pub async fn into_parts(self) -> Result<(DatagramFlow, SendBody), UpgradeError> {
        let send = self.send.await.map_err(|_| UpgradeError::NotOpened)?;
        Ok((self.datagrams, send))
    }

    /// Once the 2xx response head is sent: the stream as one channel of HTTP
    /// Datagrams (QUIC datagrams or capsules); `recv` is the request's body.
    pub async fn tunnel(self, recv: RecvBody) -> Result<DatagramTunnel, UpgradeError> {
        let (datagrams, send) = self.into_parts().await?;
        Ok(DatagramTunnel::new(datagrams, recv, send))
    }
}

/// The server's end of one extended CONNECT request's upgrade.
pub(super) struct Upgrade {
    slot: ConnectUpgrade,
    send: oneshot::Sender<SendBody>,
}

impl Upgrade {
    /// Puts the request's tunnel into its extensions.
    pub(super) fn offer(req: &mut http::Request<RecvBody>, datagrams: DatagramFlow) -> Self {
        let (tx, rx) = oneshot::channel();
        let slot = ConnectUpgrade(Arc::new(Mutex::new(Some(OnConnect {
            datagrams,
            send: rx,
        }))));
        req.extensions_mut().insert(slot.clone());
        Self { slot, send: tx }
    }

    /// Whether the handler took the tunnel and still waits for it.
    pub(super) fn taken(&self) -> bool {
        self.slot
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
            && !self.send.is_closed()
    }

    /// Hands the stream's sending half to the handler; the half comes back if the
    /// handler no longer waits.
    pub(super) fn open(self, send: SendBody) -> Result<(), SendBody> {
        self.send.send(send)
    }
}
