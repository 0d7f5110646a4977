//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade:` protocol): the request goes
//! through routing and policies like any other, and when the upstream answers
//! `101 Switching Protocols` the two connections are spliced byte for byte.
//!
//! `CONNECT host:port` (HTTPS through an HTTP proxy) is a tunnel to outside the mesh:
//! [`connect`] opens the TCP connection, answers 200 and splices.
//!
//! A spliced connection is not a request in flight: a drain does not wait for it.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The downstream side of an upgrade the client asked for.
pub(crate) struct Pending {
    downstream: OnUpgrade,
    protocol: HeaderValue,
}

/// Takes the client side of the upgrade `req` asks for, if any. Call before stripping
/// hop-by-hop headers, and [`restore`] them after.
pub(crate) fn take<B>(req: &mut Request<B>) -> Option<Pending> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    let asked = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| Pending {
        downstream: hyper::upgrade::on(&mut *req),
        protocol,
    })
}

impl Pending {
    /// Puts back the headers that ask for the upgrade.
    pub(crate) fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// When `res` switches protocols, splices the client's connection with the
    /// upstream's once both are handed over.
    pub(crate) fn splice<B>(self, res: &mut Response<B>) {
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let upstream = hyper::upgrade::on(&mut *res);
        self.restore(res.headers_mut());
        tokio::spawn(async move {
            let (down, up) = match tokio::join!(self.downstream, upstream) {
                (Ok(d), Ok(u)) => (d, u),
                (d, u) => {
                    tracing::debug!(
                        downstream = ?d.err(),
                        upstream = ?u.err(),
                        "an upgrade was not completed"
                    );
                    return;
                }
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        });
    }
}

/// Answers a `CONNECT` request: connects to `authority`, and once the client's side is
/// handed over, splices the two. Connection failures are answered with their reason.
pub(crate) async fn connect<B>(
    mut req: Request<B>,
    authority: &http::uri::Authority,
) -> Result<(), ieum_resilience::classify::Classification> {
    let port = authority.port_u16().unwrap_or(443);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let upstream = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let e: tower::BoxError = ieum_resilience::classify::ConnectError(Box::new(e)).into();
            return Err(ieum_resilience::classify::classify(&e));
        }
        Err(_) => {
            let e: tower::BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
            return Err(ieum_resilience::classify::classify(&e));
        }
    };
    let _ = upstream.set_nodelay(true);
    let downstream = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(down) = downstream.await else {
            return;
        };
        let (mut down, mut up) = (TokioIo::new(down), upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "tunnel ended with an error");
        }
    });
    Ok(())
}
