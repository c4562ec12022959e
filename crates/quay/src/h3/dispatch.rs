//! A request's life on the server, inside its connection's task and then, if it
//! waits, in a task of its own: the dispatcher that takes it from the HTTP/3 driver,
//! and the future that runs the service and sends its answer, in an allocation that
//! serves one request after another.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body as HttpBody;
use quic_h3::{IncomingRequest, RecvBody};

use super::BoxError;

/// What the server runs for each request: a tower `Service` with the bounds
/// [`Server::serve_service`](super::Server::serve_service) states, written once here
/// (the blanket impl). Its errors become [`BoxError`]s as they come out, before any
/// await, so they need not be `Send`.
pub(super) trait ServeService: Clone + Send + 'static {
    /// The response body.
    type Body: HttpBody<Data: Into<Bytes>, Error: Into<BoxError>> + Send + 'static;
    /// What the service fails with.
    type Error: Into<BoxError>;
    /// The response, on its way.
    type Future: Future<Output = Result<http::Response<Self::Body>, Self::Error>> + Send + 'static;
    /// Whether the service can take a request now.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>>;
    /// Takes a request, once ready.
    fn call(&mut self, req: http::Request<RecvBody>) -> Self::Future;
}

impl<S, B> ServeService for S
where
    S: tower_service::Service<http::Request<RecvBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Body = B;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        tower_service::Service::poll_ready(self, cx)
    }

    fn call(&mut self, req: http::Request<RecvBody>) -> S::Future {
        tower_service::Service::call(self, req)
    }
}

/// Takes a connection's requests inside its task. It runs the service's first step
/// for each request there, in the request's span; a request that is not finished by
/// then goes on in a task of its own.
struct Dispatcher<S: ServeService, A> {
    service: S,
    recorder: crate::observe::RequestRecorder,
    tasks: super::in_flight::Spawner,
    /// The requests whose tasks may run at once
    /// ([`H3Settings::max_pending_requests`](quic_h3::H3Settings::max_pending_requests)).
    limit: usize,
    make_answer: MakeAnswer<S, A>,
    /// The allocation of a request finished in its first step, for the next one: a
    /// busy connection allocates a request's future once, not per request. Given
    /// back to `spares` when the connection has no request open.
    spare: Option<Pin<Box<Respond<S, A>>>>,
    /// The server's request futures kept between requests, shared by its connections.
    spares: Spares<Respond<S, A>>,
}

/// The request futures of one server's service, kept for its connections.
pub(super) type ServiceSpares<S> = Spares<Respond<S, Answering<<S as ServeService>::Body>>>;

/// The dispatcher of one connection: its requests go to clones of `service`, at most
/// `limit` of them at once in tasks of their own, started through `tasks`; their
/// request futures come from and go back to `spares`.
pub(super) fn dispatcher<S: ServeService>(
    service: S,
    tasks: super::in_flight::Spawner,
    limit: usize,
    spares: ServiceSpares<S>,
) -> impl quic_h3::Dispatch {
    Dispatcher {
        service,
        recorder: crate::observe::RequestRecorder::new(),
        tasks,
        limit,
        make_answer: answer::<S::Body>,
        spare: None,
        spares,
    }
}

/// Finished request futures that connections gave back, for any connection's next
/// request.
///
/// A request's future is larger than the service's (a kilobyte or more is common)
/// and the allocator serves such blocks slowly: a connection that falls idle between
/// bursts would free its request's future and allocate another at each burst, and a
/// request that waits would do the same in its task. Kept here instead, at most
/// [`SPARE_BYTES`] of them for the whole server (one when one is larger), so the
/// memory held does not grow with the connections, idle ones hold none.
pub(super) struct Spares<T> {
    kept: Arc<Mutex<Vec<Pin<Box<T>>>>>,
}

/// How many bytes of finished request futures a server keeps for its connections.
const SPARE_BYTES: usize = 64 * 1024;

impl<T> Spares<T> {
    pub(super) fn new() -> Self {
        Self {
            kept: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The most kept.
    fn most() -> usize {
        (SPARE_BYTES / size_of::<T>().max(1)).max(1)
    }

    /// A kept one, if there is one.
    fn take(&self) -> Option<Pin<Box<T>>> {
        self.lock().pop()
    }

    /// Keeps `spare` (finished) unless enough are kept; then it is freed.
    fn give(&self, spare: Pin<Box<T>>) {
        let mut kept = self.lock();
        if kept.len() < Self::most() {
            kept.push(spare);
            return;
        }
        // Freed outside the lock.
        drop(kept);
        drop(spare);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pin<Box<T>>>> {
        // Only pushes and pops run under the lock: they do not panic midway.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Clone for Spares<T> {
    fn clone(&self) -> Self {
        Self {
            kept: Arc::clone(&self.kept),
        }
    }
}

/// Starts a request's answer: [`answer`], for the service's body type.
type MakeAnswer<S, A> =
    fn(Result<http::Response<<S as ServeService>::Body>, BoxError>, Answer) -> A;

impl<S, A> quic_h3::Dispatch for Dispatcher<S, A>
where
    S: ServeService,
    A: Future<Output = ()> + Send + 'static,
{
    fn has_room(&self) -> bool {
        // Past the shutdown deadline the set is gone: refused, a client may retry.
        self.tasks.has_room(self.limit)
    }

    fn dispatch(&mut self, req: IncomingRequest) -> bool {
        // A child of the connection's span, in which the driver runs.
        let span = tracing::info_span!(
            "request",
            method = %req.request.method(),
            path = req.request.uri().path(),
            status = tracing::field::Empty,
            ms = tracing::field::Empty,
        );
        let traced = !span.is_disabled();
        // The application's code that runs here runs under `catch_unwind`: the
        // metrics recorder and the service's clone now, its readiness and call in the
        // first step below. The request itself is not moved through either.
        let (service, recorder) = (&self.service, &self.recorder);
        let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Counted first, as the request is there whatever its clone does.
            let started = crate::observe::RequestStarted::new(recorder.clone(), traced);
            (service.clone(), started)
        }));
        let (service, started) = match prepared {
            Ok(prepared) => prepared,
            Err(payload) => {
                // The request and its responder go (the stream is reset), as when its
                // handler panics.
                span.in_scope(|| handler_panicked(payload));
                return false;
            }
        };
        // On the heap from the start, so that a task moves a pointer, not the whole
        // future (service state included), through every layer of the spawn. A kept
        // one is finished: its request's parts are written into it in place.
        let mut task = self
            .spare
            .take()
            .or_else(|| self.spares.take())
            .unwrap_or_else(|| Box::pin(Respond::new(self.make_answer)));
        task.as_mut().start(span, service, req, started);
        // Most handlers answer without waiting (their body, if any, came with the
        // head): run the first step here, and such a request needs no task, and its
        // answer leaves in this turn's packets. A step that waits registers no
        // waker that matters: the task polls it again as it starts.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            task.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        }));
        match first {
            Ok(Poll::Ready(())) => {
                // Finished: kept for the next request.
                self.spare = Some(task);
                false
            }
            Ok(Poll::Pending) => {
                let spares = self.spares.clone();
                self.tasks.spawn(async move {
                    task.as_mut().await;
                    // Finished (not aborted, not panicked): it serves again.
                    spares.give(task);
                });
                true
            }
            Err(payload) => {
                // As in a task of its own, a panic ends only its request: the
                // responder, dropped with the future, resets the stream.
                task.span().in_scope(|| handler_panicked(payload));
                // Whatever a drop here may throw stays here too.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(task)));
                false
            }
        }
    }

    fn idle(&mut self) {
        if let Some(slot) = self.spare.take() {
            self.spares.give(slot);
        }
    }
}

/// Logs a panic of the application's code for a request (its callers enter the
/// request's span), and drops what it threw, catching whatever that drop may throw.
fn handler_panicked(payload: Box<dyn std::any::Any + Send>) {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(panic = message, "request handler panicked");
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
}

/// What a request's answer needs besides the response.
struct Answer {
    responder: quic_h3::Responder,
    /// The tunnel offered to an extended CONNECT request.
    upgrade: Option<super::connect::Upgrade>,
    started: crate::observe::RequestStarted,
}

pin_project_lite::pin_project! {
    /// One request, inside its span: the service's readiness and call, then the
    /// answer. Written out rather than as an `async fn`, whose future keeps its
    /// arguments beside every later state and an awaited future beside the locals
    /// that fed it: here the call and the answer share their room. Its allocation
    /// serves one request after another: [`start`](Self::start) writes a request's
    /// parts into a finished one in place, where building the future whole and moving
    /// it in would copy all of it (a kilobyte or more) per request.
    pub(super) struct Respond<S: ServeService, A> {
        #[pin]
        stage: Stage<S::Future, A>,
        // The service's clone, until its call has returned (it is not kept while the
        // call or the body runs).
        service: Option<S>,
        // The request, until the service's call takes it.
        request: Option<http::Request<RecvBody>>,
        // Taken when the answer starts.
        answer: Option<Answer>,
        make_answer: MakeAnswer<S, A>,
        // Entered while the request is polled or dropped; closed as it finishes.
        span: tracing::Span,
    }

    impl<S: ServeService, A> PinnedDrop for Respond<S, A> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _entered = this.span.enter();
            // A request dropped before its end drops its call (and the request it
            // holds), then the request, then the service's clone, and its responder
            // last, which resets the stream: all in the span, even if one of those
            // drops panics (the locals still drop, after it, inside).
            let answer = this.answer.take();
            let service = this.service.take();
            let request = this.request.take();
            this.stage.set(Stage::Idle);
            drop(request);
            drop(service);
            drop(answer);
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, A> {
        /// Before the call: the service's readiness while the request waits for it;
        /// with no request waiting, finished.
        Idle,
        /// The service's call, until its response. The service's clone is gone by
        /// then: it is not kept while the call or the body runs.
        Calling { #[pin] call: F },
        /// The response on its way.
        Answering { #[pin] answer: A },
    }
}

impl<S: ServeService, A> Respond<S, A> {
    /// A finished one, for a first request.
    fn new(make_answer: MakeAnswer<S, A>) -> Self {
        Self {
            stage: Stage::Idle,
            service: None,
            request: None,
            answer: None,
            make_answer,
            span: tracing::Span::none(),
        }
    }

    /// Starts `req` in a finished one, in `span`, with the service's clone.
    fn start(
        self: Pin<&mut Self>,
        span: tracing::Span,
        service: S,
        req: IncomingRequest,
        started: crate::observe::RequestStarted,
    ) {
        let this = self.project();
        debug_assert!(
            matches!(this.stage.as_ref().get_ref(), Stage::Idle)
                && this.service.is_none()
                && this.request.is_none()
                && this.answer.is_none(),
            "a request started in an unfinished one"
        );
        *this.span = span;
        *this.service = Some(service);
        // Written into its place, not built aside with the rest and moved in: the
        // request is a few hundred bytes.
        let request = this.request.insert(req.request);
        let upgrade = req
            .datagrams
            .map(|flow| super::connect::Upgrade::offer(request, flow));
        *this.answer = Some(Answer {
            responder: req.responder,
            upgrade,
            started,
        });
    }

    /// The span of its request.
    fn span(&self) -> &tracing::Span {
        &self.span
    }
}

impl<S: ServeService, A: Future<Output = ()>> Future for Respond<S, A> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let step = {
            let _entered = this.span.enter();
            let make_answer = *this.make_answer;
            step(
                this.stage,
                this.service,
                this.request,
                this.answer,
                make_answer,
                cx,
            )
        };
        if step.is_ready() {
            // Its span closes as it finishes, not when its allocation serves again.
            *this.span = tracing::Span::none();
        }
        step
    }
}

/// Takes a request as far as it goes now; ready once it is finished.
fn step<S: ServeService, A: Future<Output = ()>>(
    mut stage: Pin<&mut Stage<S::Future, A>>,
    service: &mut Option<S>,
    request: &mut Option<http::Request<RecvBody>>,
    answer: &mut Option<Answer>,
    make_answer: MakeAnswer<S, A>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        let result = match stage.as_mut().project() {
            StageProj::Idle => {
                let readiness = match (service.as_mut(), request.is_some()) {
                    (Some(service), true) => service.poll_ready(cx),
                    _ => {
                        // Finished, or its call panicked (a task polled again after
                        // that): what is left goes now, the responder last, which
                        // resets the stream.
                        *request = None;
                        *service = None;
                        *answer = None;
                        return Poll::Ready(());
                    }
                };
                match readiness {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        if let (Some(svc), Some(req)) = (service.as_mut(), request.take()) {
                            let call = svc.call(req);
                            // Kept until its call returned: a panic in the call
                            // leaves it to be dropped with the rest, not while the
                            // panic unwinds.
                            *service = None;
                            stage.set(Stage::Calling { call });
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        // The request goes now, before the 500 leaves.
                        *request = None;
                        *service = None;
                        Err(e.into())
                    }
                }
            }
            StageProj::Calling { call } => match call.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result.map_err(Into::into),
            },
            StageProj::Answering { answer } => {
                if answer.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                stage.set(Stage::Idle);
                return Poll::Ready(());
            }
        };
        // The answer's context is there: it is taken only here, once.
        match answer.take() {
            Some(ctx) => stage.set(Stage::Answering {
                answer: make_answer(result, ctx),
            }),
            None => stage.set(Stage::Idle),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer: the service's response on its way out, then the request
    /// recorded as finished. Written out, like [`Respond`]: a response complete at
    /// once leaves in the step that made it, with no future of its own.
    #[project = AnsweringProj]
    pub(super) enum Answering<B> {
        /// The response, its body streamed as it comes.
        Sending {
            #[pin]
            send: quic_h3::SendResponse<B>,
            started: Option<crate::observe::RequestStarted>,
            status: http::StatusCode,
        },
        /// The rare ones (a 500 for the service's error, an extended CONNECT's tunnel),
        /// boxed so that they do not widen every request's future.
        Other { future: Pin<Box<dyn Future<Output = ()> + Send>> },
    }
}

impl<B> Future for Answering<B>
where
    B: HttpBody,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            AnsweringProj::Sending {
                send,
                started,
                status,
            } => {
                let Poll::Ready(result) = send.poll(cx) else {
                    return Poll::Pending;
                };
                if let Some(started) = started.take() {
                    started.finished(*status);
                }
                match result {
                    Ok(bytes) => tracing::debug!(bytes, "request"),
                    Err(e) => tracing::debug!(error = %e, "request failed"),
                }
                Poll::Ready(())
            }
            AnsweringProj::Other { future } => future.as_mut().poll(cx),
        }
    }
}

/// Starts sending the service's response (a 500 for its error); the request is
/// recorded as finished once it is out.
fn answer<B>(result: Result<http::Response<B>, BoxError>, ctx: Answer) -> Answering<B>
where
    B: HttpBody + Send + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    let Answer {
        responder,
        upgrade,
        started,
    } = ctx;
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "handler failed");
            let mut head = http::Response::new(());
            *head.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            let future = async move {
                if let Ok(body) = responder.send_response(head).await {
                    let _ = body.finish().await;
                }
                started.finished(http::StatusCode::INTERNAL_SERVER_ERROR);
            };
            return Answering::Other {
                future: Box::pin(future),
            };
        }
    };
    let status = response.status();
    // An extended CONNECT the handler took: the stream is its tunnel's.
    if let Some(upgrade) = upgrade.filter(|u| u.taken() && status.is_success()) {
        let (parts, _) = response.into_parts();
        let head = http::Response::from_parts(parts, ());
        let future = async move {
            match responder.send_response(head).await {
                Ok(send) => {
                    if let Err(send) = upgrade.open(send) {
                        // The handler stopped waiting: the stream ends cleanly.
                        let _ = send.finish().await;
                    }
                    started.finished(status);
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT response failed"),
            }
        };
        return Answering::Other {
            future: Box::pin(future),
        };
    }
    Answering::Sending {
        send: responder.send_body_response(response),
        started: Some(started),
        status,
    }
}
