//! The accept loop shared by the three listeners: HTTP/1.1 with keep-alive and HTTP/2
//! (h2c prior knowledge, which gRPC clients use) on the same port, one task per
//! connection, and a graceful stop (no new connections; open ones finish the requests in
//! progress and close).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::metrics::TcpMetrics;

/// Serves `listener` with `handler` until `stop` is cancelled.
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
            let handler = handler.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).keep_alive(true);
                builder.http2().timer(TokioTimer::new());
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    hyper::service::service_fn(handler),
                );
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
                drop(open);
            });
        }
    })
}
