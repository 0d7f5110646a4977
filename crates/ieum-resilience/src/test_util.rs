//! Helpers shared by the unit tests.

use http::{Request, Response, StatusCode};

pub(crate) fn get() -> Request<()> {
    Request::get("http://orders/v1").body(()).unwrap()
}

pub(crate) fn status(code: u16) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::from_u16(code).unwrap();
    res
}

/// Lets spawned tasks run up to their next wait without moving paused time.
pub(crate) async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A mock upstream of `Request<()>` and its handle.
pub(crate) type Mock = tower_test::mock::Mock<Request<()>, Response<()>>;
/// The handle of a [`Mock`].
pub(crate) type Handle = tower_test::mock::Handle<Request<()>, Response<()>>;
