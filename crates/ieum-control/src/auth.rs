//! The security baseline: open on loopback, a bearer token for writes anywhere else.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Who made a request, as recorded in events (`local`, `admin`, `anonymous`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author(pub String);

/// How requests are authorized.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Bound to loopback: anyone who can connect is local; writes are by `local`.
    Open,
    /// Writes need `Authorization: Bearer TOKEN`; reads are open.
    Token(Arc<str>),
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: attaches the [`Author`] and refuses unauthenticated writes.
pub(crate) async fn authorize(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let author = match &auth {
        Auth::Open => Author("local".into()),
        Auth::Token(token) => {
            let presented = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            match presented {
                Some(p) if same(p.as_bytes(), token.as_bytes()) => Author("admin".into()),
                Some(_) => {
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "E1011",
                        "the bearer token is not valid for this server",
                    )
                    .into_response();
                }
                None if read => Author("anonymous".into()),
                None => {
                    return ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "E1010",
                        "this server is not bound to loopback, so writes need a token: pass --token or set IEUM_TOKEN \
                         (the admin token is in the server's data dir, file admin.token)",
                    )
                    .into_response();
                }
            }
        }
    };
    req.extensions_mut().insert(author);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn comparison_is_exact() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
