//! Serving connections: one task per connection, at most `max_connections` of them at once
//! (further clients wait in the listen backlog), each with the deadlines that keep slow or idle
//! clients from holding file descriptors:
//!
//! * a request head must arrive within `header_read_timeout` of its first byte;
//! * a connection with no request in flight closes after `idle_timeout` without a byte;
//! * a request body that moves no byte for `body_idle_timeout` fails, and so does a response
//!   the client stops reading; a slow but moving transfer is never cut.
//!
//! The same applies to plain HTTP and TLS: the deadlines watch the connection the listener
//! hands over (TCP, or TLS after its own handshake deadline).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::listener::Incoming;
use crate::metrics::{metrics, RequestLabels, RouteLabels};

/// The deadlines and the connection cap, from `[server]` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_idle: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Limits {
            header_read: secs(c.header_read_timeout_secs),
            idle: secs(c.idle_timeout_secs),
            body_idle: secs(c.body_idle_timeout_secs),
            max_connections: c.max_connections.max(1),
        }
    }
}

/// Serve `app` on `incoming` until `shutdown` completes, then let open connections finish
/// their requests for up to `grace`.
pub async fn serve(
    mut incoming: Incoming,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (io, peer) = tokio::select! {
            c = axum::serve::Listener::accept(&mut incoming) => c,
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::default());
        let io = Watched::new(io, activity.clone(), limits);
        let app = app.clone();
        let m = metrics();
        m.connections.inc();
        let open = crate::metrics::InFlight::new(&m.connections_open);
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let guard = activity.begin();
            let started = std::time::Instant::now();
            let route = super::route_label(req.uri().path());
            let method = req.method().as_str().to_string();
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let req = axum::extract::Request::from_parts(parts, Body::new(IdleBody::new(body, limits.body_idle)));
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await?;
                let m = metrics();
                m.http_requests
                    .get_or_create(&RequestLabels {
                        route,
                        method: method.clone(),
                        status: resp.status().as_u16(),
                    })
                    .inc();
                m.http_duration
                    .get_or_create(&RouteLabels { route, method })
                    .observe(started.elapsed().as_secs_f64());
                Ok::<_, Infallible>(resp.map(|b| {
                    Body::new(Tracked {
                        inner: b,
                        _guard: guard,
                    })
                }))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
            drop(slot);
        });
    }
    drop(incoming);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight requests still running after {grace:?}; exiting");
    }
}

/// What the connection's requests tell its deadlines: how many are in flight, and how many
/// have begun (a new one ends the head being read).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    begun: AtomicU64,
    /// The connection task, woken when its last request ends so that the read side starts
    /// its idle deadline.
    idle_waker: futures::task::AtomicWaker,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.begun.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }
}

/// One request in flight, until its response body is dropped (sent or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_waker.wake();
        }
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                metrics().http_bytes_out.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails when the client sends nothing for `idle` while the handler is
/// waiting for it (time the handler spends elsewhere does not count).
struct IdleBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    waiting: bool,
}

impl IdleBody {
    fn new(inner: hyper::body::Incoming, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
        }
    }
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if let Some(Ok(f)) = &frame {
                    if let Some(data) = f.data_ref() {
                        metrics().http_bytes_in.inc_by(data.len() as u64);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client sent no byte of the request body for {} s (server.body_idle_timeout_secs)",
                            this.idle.as_secs()
                        ),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose reads and writes run against the deadlines of [`Limits`].
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    limits: Limits,
    /// Requests begun when the read side last looked.
    seen: u64,
    /// When the first byte of a request head arrived, while it is still being read.
    head_since: Option<Instant>,
    last_byte: Instant,
    read_sleep: Pin<Box<Sleep>>,
    write_stalled_since: Option<Instant>,
    write_sleep: Pin<Box<Sleep>>,
}

impl<T> Watched<T> {
    fn new(inner: T, activity: Arc<Activity>, limits: Limits) -> Self {
        let now = Instant::now();
        Watched {
            inner,
            activity,
            limits,
            seen: 0,
            head_since: None,
            last_byte: now,
            read_sleep: Box::pin(tokio::time::sleep_until(now + limits.idle)),
            write_stalled_since: None,
            write_sleep: Box::pin(tokio::time::sleep_until(now + limits.body_idle)),
        }
    }

    /// A request began since the last look: the head being read is complete.
    fn sync(&mut self) {
        let begun = self.activity.begun.load(Ordering::SeqCst);
        if begun != self.seen {
            self.seen = begun;
            self.head_since = None;
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.sync();
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.last_byte = now;
                    if this.activity.in_flight.load(Ordering::SeqCst) == 0 && this.head_since.is_none() {
                        this.head_since = Some(now);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.sync();
                this.activity.idle_waker.register(cx.waker());
                if this.activity.in_flight.load(Ordering::SeqCst) > 0 {
                    // A handler is at work; the request body has its own deadline.
                    this.last_byte = Instant::now();
                    return Poll::Pending;
                }
                let (deadline, what) = match this.head_since {
                    Some(t) => (t + this.limits.header_read, "request head not received in time"),
                    None => (this.last_byte + this.limits.idle, "idle connection"),
                };
                this.read_sleep.as_mut().reset(deadline);
                match this.read_sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(timed_out(what))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    /// Account for one write: progress resets the stall clock, a pending write runs it.
    fn wrote(&mut self, polled: Poll<io::Result<usize>>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(r) => {
                self.write_stalled_since = None;
                if matches!(r, Ok(n) if n > 0) {
                    self.last_byte = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let since = *self.write_stalled_since.get_or_insert_with(Instant::now);
        self.write_sleep.as_mut().reset(since + self.limits.body_idle);
        match self.write_sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(timed_out("the client stopped reading the response")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.write_stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
