//! The accept loop shared by the listeners: HTTP/1.1 with keep-alive and HTTP/2 (h2c prior
//! knowledge, which gRPC clients use; over TLS, whatever ALPN chose) on the same port, one
//! task per connection, and a graceful stop (no new connections; open ones finish the
//! requests in progress and close).
//!
//! [`spawn`] serves plain text. [`accept`] and [`serve`] are its two halves, for the mesh's
//! inbound listener (`mtls`), which decides per connection whether it speaks TLS and who
//! the peer is before serving HTTP over it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::metrics::TcpMetrics;

/// Serves `listener` with `handler` in plain text until `stop` is cancelled.
pub(crate) fn spawn<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tcp: Option<Arc<TcpMetrics>>,
    handler: F,
) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let s = stop.clone();
    accept(listener, stop, tcp, move |stream| {
        let (handler, stop) = (handler.clone(), s.clone());
        async move { serve(stream, &stop, handler).await }
    })
}

/// Accepts on `listener` until `stop` is cancelled, and runs `connection` on its own task
/// for every accepted stream (counted in `tcp` while it runs).
pub(crate) fn accept<C, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tcp: Option<Arc<TcpMetrics>>,
    connection: C,
) -> JoinHandle<()>
where
    C: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let open = tcp.as_ref().map(TcpMetrics::open);
            let conn = connection(stream);
            tokio::spawn(async move {
                conn.await;
                drop(open);
            });
        }
    })
}

/// Serves HTTP on one connection with `handler` until it ends, or, once `stop` is
/// cancelled, until the requests in progress are answered.
pub(crate) async fn serve<I, F, Fut>(io: I, stop: &CancellationToken, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), hyper::service::service_fn(handler));
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
