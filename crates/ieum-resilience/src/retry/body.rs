//! A request body that can be sent again: it streams to the first attempt as it arrives
//! (nothing is held back, so streaming and bidirectional calls keep working) while keeping
//! a copy of what went through, up to a limit; a retry replays the copy, then continues
//! reading the original where the earlier attempt stopped (Linkerd's `ReplayBody` idea).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tower::BoxError;

use super::BodyError;

/// The body the layers under [`super::Retry`] see.
#[derive(Debug)]
pub struct RetryBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    /// Known to be empty: nothing to record.
    Empty,
    /// Sent once, never replayed (retries off, or known to exceed the limit).
    Once(Pin<Box<B>>),
    /// Recorded for replay; `pos` is the next recorded chunk this copy sends.
    Replay {
        shared: Arc<Mutex<Shared<B>>>,
        pos: usize,
        trailers_sent: bool,
    },
}

#[derive(Debug)]
struct Shared<B> {
    /// The original body, until it ends.
    body: Option<Pin<Box<B>>>,
    /// Chunks read from the original so far, whether still recorded or not.
    head: usize,
    /// The recorded chunks (`head` of them), dropped on overflow.
    chunks: Vec<Bytes>,
    recorded: u64,
    /// More than the limit went through: the copy is gone, no replay is possible.
    overflow: bool,
    trailers: Option<HeaderMap>,
    limit: u64,
}

/// The recording side, kept by the retry layer.
#[derive(Debug)]
pub(super) struct Recording<B> {
    shared: Option<Arc<Mutex<Shared<B>>>>,
}

impl<B> RetryBody<B> {
    /// A body of nothing.
    pub fn empty() -> Self {
        RetryBody { kind: Kind::Empty }
    }

    /// A body sent as is, once.
    pub fn once(body: B) -> Self {
        RetryBody {
            kind: Kind::Once(Box::pin(body)),
        }
    }
}

impl<B> Recording<B> {
    /// Records `body` up to `limit` bytes; returns the recording and the first copy.
    pub(super) fn new(body: B, limit: u64) -> (Self, RetryBody<B>) {
        let shared = Arc::new(Mutex::new(Shared {
            body: Some(Box::pin(body)),
            head: 0,
            chunks: Vec::new(),
            recorded: 0,
            overflow: false,
            trailers: None,
            limit,
        }));
        let first = RetryBody {
            kind: Kind::Replay {
                shared: shared.clone(),
                pos: 0,
                trailers_sent: false,
            },
        };
        (
            Recording {
                shared: Some(shared),
            },
            first,
        )
    }

    /// Nothing to record (an empty body): every copy is empty.
    pub(super) fn empty() -> Self {
        Recording { shared: None }
    }

    /// Another copy, if what was sent so far is still recorded.
    pub(super) fn replay(&self) -> Option<RetryBody<B>> {
        let Some(shared) = &self.shared else {
            return Some(RetryBody::empty());
        };
        if lock(shared).overflow {
            return None;
        }
        Some(RetryBody {
            kind: Kind::Replay {
                shared: shared.clone(),
                pos: 0,
                trailers_sent: false,
            },
        })
    }
}

fn lock<B>(m: &Mutex<Shared<B>>) -> std::sync::MutexGuard<'_, Shared<B>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Once(body) => body
                .as_mut()
                .poll_frame(cx)
                .map_err(|e| BodyError::from_box(e.into()).into()),
            Kind::Replay {
                shared,
                pos,
                trailers_sent,
            } => {
                let mut s = lock(shared);
                if *pos < s.head {
                    if s.overflow {
                        // Another copy read past the limit and the record is gone: this
                        // copy cannot be completed (the retry layer never sends one).
                        return Poll::Ready(Some(Err("request body no longer replayable".into())));
                    }
                    let chunk = s.chunks[*pos].clone();
                    *pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // This copy has sent everything read so far: read on from the original.
                let Some(body) = s.body.as_mut() else {
                    if !*trailers_sent && let Some(t) = s.trailers.clone() {
                        *trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    return Poll::Ready(None);
                };
                match std::task::ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        s.body = None;
                        Poll::Ready(None)
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(BodyError::from_box(e.into()).into()))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if !s.overflow && s.recorded + len <= s.limit {
                                s.recorded += len;
                                s.chunks.push(data.clone());
                                s.head += 1;
                                *pos += 1;
                            } else {
                                s.overflow = true;
                                s.chunks = Vec::new();
                            }
                        } else if let Some(t) = frame.trailers_ref() {
                            s.trailers = Some(t.clone());
                            *trailers_sent = true;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Once(b) => b.is_end_stream(),
            Kind::Replay {
                shared,
                pos,
                trailers_sent,
            } => {
                let s = lock(shared);
                *pos >= s.head
                    && s.body.as_ref().is_none_or(|b| b.is_end_stream())
                    && (s.trailers.is_none() || *trailers_sent)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Once(b) => b.size_hint(),
            Kind::Replay { shared, pos, .. } => {
                let s = lock(shared);
                let replayed: u64 = s.chunks.iter().skip(*pos).map(|c| c.len() as u64).sum();
                let rest = s
                    .body
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(replayed + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(replayed + upper);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn stream(
        chunks: &[&'static str],
        trailers: bool,
    ) -> impl Body<Data = Bytes, Error = BoxError> + use<> {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("abc"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn read_all<B: Body<Data = Bytes, Error = BoxError>>(b: B) -> (Bytes, Option<HeaderMap>) {
        let c = b.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn replays_what_was_read_then_continues_the_original() {
        let (rec, mut first) = Recording::new(stream(&["ab", "cd", "ef"], true), 1024);
        // The first attempt reads one chunk only (the server answered early).
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        drop(first);
        let (data, trailers) = read_all(rec.replay().unwrap()).await;
        assert_eq!(data, "abcdef");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        // A third copy replays everything from the record, trailers included.
        let (data, trailers) = read_all(rec.replay().unwrap()).await;
        assert_eq!(data, "abcdef");
        assert!(trailers.is_some());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_stream_through_but_cannot_be_replayed() {
        let (rec, first) = Recording::new(stream(&["abc", "def", "ghi"], false), 5);
        let (data, _) = read_all(first).await;
        assert_eq!(data, "abcdefghi", "the first attempt gets everything");
        assert!(rec.replay().is_none());
    }

    #[tokio::test]
    async fn size_hints_add_the_record_and_the_rest() {
        let body = http_body_util::Full::new(Bytes::from_static(b"hello"));
        let (rec, first) = Recording::new(body, 1024);
        assert_eq!(first.size_hint().exact(), Some(5));
        let (data, _) = read_all(first).await;
        assert_eq!(data, "hello");
        let again = rec.replay().unwrap();
        assert_eq!(again.size_hint().exact(), Some(5));
        assert!(!again.is_end_stream());
        assert_eq!(read_all(again).await.0, "hello");
        assert!(RetryBody::<http_body_util::Empty<Bytes>>::empty().is_end_stream());
    }
}
