//! Fault injection for chaos testing: delay a share of requests by a fixed time, abort a
//! share with an HTTP or gRPC status, without calling upstream. Aborted answers carry
//! `ieum-reason: fault-injected` so nobody mistakes them for real failures. A layer made
//! from `None` passes everything through (present but unconfigured).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use tokio::time::Sleep;
use tower::{BoxError, Layer, Service};

use crate::classify::{REASON_HEADER, SOURCE_HEADER};

/// How aborted requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// This HTTP status.
    Http(StatusCode),
    /// HTTP 200 with this `grpc-status`.
    Grpc(u8),
}

/// Runtime configuration, built from `ieum_model::policy::FaultInjectionSpec`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Delay and the share (0–1) of requests delayed.
    pub delay: Option<(Duration, f64)>,
    /// Answer and the share (0–1) of requests aborted.
    pub abort: Option<(Abort, f64)>,
}

impl From<&ieum_model::policy::FaultInjectionSpec> for FaultConfig {
    fn from(f: &ieum_model::policy::FaultInjectionSpec) -> Self {
        FaultConfig {
            delay: f.delay.map(|d| (d.duration.get(), d.percent / 100.0)),
            abort: f.abort.and_then(|a| {
                let abort = match (a.http_status, a.grpc_status) {
                    (Some(code), _) => Abort::Http(StatusCode::from_u16(code).ok()?),
                    (None, Some(code)) => Abort::Grpc(code),
                    (None, None) => return None,
                };
                Some((abort, a.percent / 100.0))
            }),
        }
    }
}

/// Injects faults; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultInjectionLayer {
    config: Option<FaultConfig>,
}

impl FaultInjectionLayer {
    /// Faults from `config`, or a pass-through for `None`.
    pub fn new(config: Option<FaultConfig>) -> Self {
        FaultInjectionLayer { config }
    }
}

impl<S> Layer<S> for FaultInjectionLayer {
    type Service = FaultInjection<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection {
            inner,
            config: self.config,
        }
    }
}

/// See [`FaultInjectionLayer`].
#[derive(Debug, Clone)]
pub struct FaultInjection<S> {
    inner: S,
    config: Option<FaultConfig>,
}

fn sample(share: f64) -> bool {
    share >= 1.0 || (share > 0.0 && rand::random::<f64>() < share)
}

impl<S, B, RB> Service<Request<B>> for FaultInjection<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    RB: Default,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = FaultFuture<S, Request<B>, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(config) = &self.config else {
            return FaultFuture::call(self.inner.call(req));
        };
        if let Some((abort, share)) = config.abort
            && sample(share)
        {
            return FaultFuture {
                state: State::Aborted {
                    res: Some(aborted(abort)),
                },
            };
        }
        if let Some((delay, share)) = config.delay
            && sample(share)
        {
            // Keep the service polled ready for after the delay, as tower's layers do.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            return FaultFuture {
                state: State::Delayed {
                    sleep: tokio::time::sleep(delay),
                    svc: Some((ready, req)),
                },
            };
        }
        FaultFuture::call(self.inner.call(req))
    }
}

fn aborted<RB: Default>(abort: Abort) -> Response<RB> {
    let mut res = Response::new(RB::default());
    match abort {
        Abort::Http(status) => *res.status_mut() = status,
        Abort::Grpc(code) => {
            res.headers_mut().insert(
                crate::classify::grpc::STATUS,
                HeaderValue::from(u16::from(code)),
            );
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
        }
    }
    res.headers_mut()
        .insert(REASON_HEADER, HeaderValue::from_static("fault-injected"));
    res.headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static("local"));
    res
}

pin_project_lite::pin_project! {
    /// Future of [`FaultInjection`].
    pub struct FaultFuture<S: Service<R>, R, RB> {
        #[pin]
        state: State<S, R, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S: Service<R>, R, RB> {
        // Passing through.
        Call { #[pin] fut: S::Future },
        // Waiting out an injected delay, with the ready service and the request.
        Delayed { #[pin] sleep: Sleep, svc: Option<(S, R)> },
        // Answering an injected abort.
        Aborted { res: Option<Response<RB>> },
    }
}

impl<S: Service<R>, R, RB> FaultFuture<S, R, RB> {
    fn call(fut: S::Future) -> Self {
        FaultFuture {
            state: State::Call { fut },
        }
    }
}

impl<S, R, RB> Future for FaultFuture<S, R, RB>
where
    S: Service<R, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Call { fut } => return fut.poll(cx).map_err(Into::into),
                StateProj::Aborted { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
                StateProj::Delayed { sleep, svc } => {
                    std::task::ready!(sleep.poll(cx));
                    let (mut s, req) = svc.take().expect("polled after completion");
                    let fut = s.call(req);
                    state.set(State::Call { fut });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
