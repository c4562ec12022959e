//! Advertising HTTP/3 from HTTP/1.1 and HTTP/2 (RFC 7838): the `Alt-Svc` header.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::HeaderValue;

/// The `Alt-Svc` value that points clients at HTTP/3 on `port` of the same host, to
/// be remembered for `max_age`: `h3=":443"; ma=86400`.
pub fn alt_svc_value(port: u16, max_age: Duration) -> HeaderValue {
    let value = format!("h3=\":{port}\"; ma={}", max_age.as_secs());
    HeaderValue::try_from(value).expect("digits, quotes and letters are a valid header value")
}

/// A tower layer for the HTTP/1.1 and HTTP/2 side of a server: adds an `Alt-Svc`
/// header (see [`alt_svc_value`]) to every response that has none, so browsers
/// try HTTP/3 on their next request.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use quay::h3::AltSvcLayer;
///
/// let tcp_app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(AltSvcLayer::new(443, Duration::from_secs(86_400)));
/// # let _ = tcp_app;
/// ```
#[derive(Debug, Clone)]
pub struct AltSvcLayer {
    value: HeaderValue,
}

impl AltSvcLayer {
    /// HTTP/3 on `port` of the same host, remembered for `max_age`.
    pub fn new(port: u16, max_age: Duration) -> Self {
        Self::from_value(alt_svc_value(port, max_age))
    }

    /// A header value of the caller's (several alternatives, another host).
    pub fn from_value(value: HeaderValue) -> Self {
        Self { value }
    }
}

impl<S> tower_layer::Layer<S> for AltSvcLayer {
    type Service = AltSvcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AltSvcService {
            inner,
            value: self.value.clone(),
        }
    }
}

/// The service [`AltSvcLayer`] wraps around another.
#[derive(Debug, Clone)]
pub struct AltSvcService<S> {
    inner: S,
    value: HeaderValue,
}

impl<S, Req, B> tower_service::Service<Req> for AltSvcService<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = AltSvcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        AltSvcFuture {
            inner: self.inner.call(req),
            value: Some(self.value.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AltSvcService`].
    #[derive(Debug)]
    pub struct AltSvcFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for AltSvcFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            response
                .headers_mut()
                .entry(http::header::ALT_SVC)
                .or_insert(value);
        }
        Poll::Ready(Ok(response))
    }
}
