//! The page shell: head with the one stylesheet, the nav bar, and the live script; and the
//! response that carries it (with a per-response script nonce for the CSP).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ieum_model::EventKind;
use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The stylesheet, inlined in every page (no external assets: the UI works offline).
const CSS: &str = include_str!("../assets/ui.css");
/// The live-update script, inlined in every page; nothing needs it to be read.
const SCRIPT: &str = include_str!("../assets/live.js");

/// The sections of the nav bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Services,
    Topology,
    Topics,
    Apis,
    Config,
    Events,
    Sagas,
    None,
}

/// A rendered page, turned into a response with its status.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) title: String,
    pub(crate) nav: Nav,
    /// The event stream the live script follows (`/v1/events/stream?…`), if any.
    pub(crate) stream: Option<String>,
    pub(crate) body: Markup,
}

impl Page {
    pub(crate) fn new(title: impl Into<String>, nav: Nav, body: Markup) -> Self {
        Page {
            status: StatusCode::OK,
            title: title.into(),
            nav,
            stream: None,
            body,
        }
    }

    pub(crate) fn stream(mut self, url: impl Into<String>) -> Self {
        self.stream = Some(url.into());
        self
    }

    /// The whole document; `nonce` marks the one script the CSP allows.
    pub(crate) fn render(&self, nonce: &str) -> Markup {
        let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        let link = |to: Nav, href: &str, text: &str| {
            html! { a href=(href) class=[(self.nav == to).then_some("on")] { (text) } }
        };
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · ieum" }
                    style { (PreEscaped(CSS)) }
                }
                body data-stream=[self.stream.as_deref()] data-kinds=(kinds.join(" ")) {
                    nav {
                        a.brand href="/ui" { "ieum" }
                        (link(Nav::Services, "/ui/services", "Services"))
                        (link(Nav::Topology, "/ui/topology", "Topology"))
                        (link(Nav::Topics, "/ui/topics", "Topics"))
                        (link(Nav::Apis, "/ui/apis", "APIs"))
                        (link(Nav::Config, "/ui/config", "Configuration"))
                        (link(Nav::Events, "/ui/events", "Events"))
                        (link(Nav::Sagas, "/ui/sagas", "Sagas"))
                        @if self.stream.is_some() {
                            span.live #live { "○ static" }
                        }
                    }
                    main { (self.body) }
                    script nonce=(nonce) { (PreEscaped(SCRIPT)) }
                }
            }
        }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let nonce = format!("{:032x}", rand::random::<u128>());
        let html = self.render(&nonce).into_string();
        let mut resp = (self.status, html).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // Everything is inline and same-origin: whatever a hostile name or description
        // might smuggle past escaping still cannot run a script or load anything.
        let csp = format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'"
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        resp
    }
}

/// A page that says what was not found, with status 404.
pub(crate) fn not_found(title: &str, message: Markup) -> Page {
    Page {
        status: StatusCode::NOT_FOUND,
        ..Page::new(
            title,
            Nav::None,
            html! {
                h1 { (title) }
                p { (message) }
                p { a href="/ui/services" { "All services" } " · " a href="/ui/events" { "All events" } }
            },
        )
    }
}

/// A page for a failure to read what a page shows (the store is unreachable, …).
pub(crate) fn failed(what: &str, error: &dyn std::fmt::Display) -> Page {
    tracing::warn!(%error, "ui: could not read {what}");
    Page {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..Page::new(
            "Unavailable",
            Nav::None,
            html! {
                h1 { "Could not read " (what) }
                p.muted { (error.to_string()) }
                p { "The registry's storage may be unavailable; this page works again when it recovers." }
            },
        )
    }
}
