//! The HTTP server: the accept loop with its connection cap, and per-connection deadlines.
//!
//! Bounds and policies (each protects the devices' share of the process — file descriptors,
//! memory, the event loop — from whoever can reach the HTTP port):
//!
//! - At most [`Limits::max_connections`] connections at once; one over the cap is accepted and
//!   closed at once (counted in `cyncd_http_connections_refused_total`), so a flood of idle
//!   connections never takes the file descriptors device connections need.
//! - A request head must arrive within [`Limits::header_timeout`] of the connection opening or
//!   of the previous answer (hyper's header-read timeout), else the connection closes: this is
//!   also the idle timeout of a kept-alive connection between requests.
//! - A connection on which no byte moves for [`Limits::idle_timeout`] closes (a client that
//!   stopped reading its answer, or a stalled body after the request deadline).
//! - Request heads are read into at most [`MAX_HEAD_BUFFER`] bytes; bodies are bounded and
//!   timed by [`super::guard`].
//! - HTTP/1.1 only. On shutdown every connection is told to finish its answer and close.

use super::guard::Peer;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Largest buffer hyper reads a request head into (headers beyond it get 431).
pub const MAX_HEAD_BUFFER: usize = 64 * 1024;
/// How long the accept loop pauses after an accept error (out of file descriptors), so it
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once.
    pub max_connections: usize,
    /// Deadline for a request head, from the connection's start or the previous answer.
    pub header_timeout: Duration,
    /// A connection with no byte in or out for this long closes.
    pub idle_timeout: Duration,
}

/// HTTP server metrics.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    /// `cyncd_http_connections_refused_total`: connections closed at once by the cap.
    pub refused: Counter,
    /// `cyncd_http_connections_total`: connections served.
    pub accepted: Counter,
}

impl HttpMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("cyncd_http");
        r.register(
            "connections_refused",
            "HTTP connections closed at once because too many were open",
            m.refused.clone(),
        );
        r.register("connections", "HTTP connections served", m.accepted.clone());
        m
    }
}

/// Serves `router` on `listener` until `cancel`; connection tasks are spawned on `tracker`.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    metrics: HttpMetrics,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.inc();
            debug!(%peer, "HTTP connection refused: too many open");
            drop(stream);
            continue;
        };
        metrics.accepted.inc();
        let router = router.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            connection(stream, peer, router, limits, cancel).await;
            drop(slot);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: axum::Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Idle::new(stream, limits.idle_timeout));
    let service = TowerToHyperService::new(router.layer(axum::Extension(Peer(peer))));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
            return;
        }
        () = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// A stream that fails with `TimedOut` once no byte has moved in either direction for its
/// timeout. The deadline is re-armed on progress only, so a trickle keeps it open only as long
/// as the other deadlines (head, body) allow.
struct Idle {
    stream: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn moved(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "HTTP connection idle")
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
