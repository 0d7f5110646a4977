//! `/ui/apis`: the API catalogue — every `Api` the gateways publish, with its base path,
//! backend, how consumers authenticate, owner, the backend's SLA and health, and its
//! consumers; `?q=` keeps those whose name, description, owner, base path or service hold
//! every word. `/ui/apis/{name}`: one API's operations under its base path with a `curl`
//! line each, its consumers, its OpenAPI document, and how its backend is doing.
//!
//! The catalogue and each API's document come from the registry (`Registry::apis`,
//! `Registry::api_openapi`), as `/v1/apis` serves them; the backend's health, SLA and
//! signals are the services page's ([`ServicesView`]).

use ieum_model::api::openapi;
use ieum_model::api::{ApiSpec, OperationSet, Operations};
use ieum_registry::registry::CatalogueApi;
use ieum_registry::{Registry, RegistryError};
use maud::{Markup, html};

use crate::format::{self, NONE};
use crate::layout::{self, Nav, Page};
use crate::pages::services::{ServicesView, counts_badge, observed_text, sla_status, sla_text};
use crate::parts;

/// What the catalogue's live parts follow: configuration changes and instances coming and
/// going (their health).
const STREAM: &str = "/v1/events/stream";

/// Where a curl line sends requests when the API names no host.
const GATEWAY: &str = "http://GATEWAY";

/// Whether `api` holds every word of `query` (case-insensitive) in its name, description,
/// owner, base path or backend.
fn matches(api: &CatalogueApi, query: &str) -> bool {
    let spec = &api.spec;
    let fields = [
        Some(api.name.as_str()),
        spec.description.as_deref(),
        api.owner.as_deref(),
        Some(spec.base_path.as_str()),
        spec.backend.service.as_ref().map(|s| s.as_str()),
        spec.backend.flow.as_ref().map(|f| f.as_str()),
    ];
    let text = fields
        .iter()
        .flatten()
        .map(|f| f.to_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    query
        .split_whitespace()
        .all(|w| text.contains(&w.to_lowercase()))
}

/// The ways consumers authenticate, as short words.
fn auth_kinds(spec: &ApiSpec) -> Vec<&'static str> {
    let a = &spec.auth;
    [
        (a.api_key.is_some(), "API key"),
        (a.jwt.is_some(), "JWT"),
        (a.anonymous, "anonymous"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, k)| k)
    .collect()
}

fn api_href(name: &str) -> String {
    format!("/ui/apis/{name}")
}

fn consumer_link(name: &str) -> Markup {
    html! { a href={ "/ui/config/ApiConsumer/" (name) } { (name) } }
}

/// The backend: a link to the service's page (with the version it is kept to), or the
/// `Flow`'s resource.
fn backend(spec: &ApiSpec) -> Markup {
    let b = &spec.backend;
    html! {
        @if let Some(s) = &b.service {
            (parts::service_link(s.as_str()))
            @if let Some(v) = &b.version { " " span.kv { "version " (v) } }
        } @else if let Some(f) = &b.flow {
            "flow " a href={ "/ui/config/Flow/" (f) } { (f) }
        }
    }
}

/// The backend service's instances up of total, as the services page shows them.
fn health(view: &ServicesView, spec: &ApiSpec) -> Markup {
    let Some(service) = &spec.backend.service else {
        return html! { span.muted { (NONE) } };
    };
    match view.services.iter().find(|s| s.name == service.as_str()) {
        Some(s) => counts_badge(s.instances.up, s.instances.total),
        None => html! { (format::badge("bad", "not registered")) },
    }
}

/// The backend service's SLA against the last hour, as the services page shows it.
fn sla(view: &ServicesView, spec: &ApiSpec) -> Markup {
    let service = spec.backend.service.as_ref().map(|s| s.as_str());
    html! {
        @if let Some(sla) = service.and_then(|s| view.slas.get(s)) {
            @let hour = service.and_then(|s| view.hour.served.get(s));
            @let (class, word) = sla_status(sla, hour);
            span class={ "badge " (class) } { (word) }
            div.kv { "target " (sla_text(sla)) }
            div.kv { "observed " (observed_text(hour)) }
        } @else {
            span.muted { (NONE) }
        }
    }
}

pub(crate) async fn list(registry: &Registry, query: Option<&str>) -> Page {
    let apis = match registry.apis().await {
        Ok(a) => a,
        Err(e) => return layout::failed("the API catalogue", &e),
    };
    let query = query.map(str::trim).unwrap_or_default();
    let view = ServicesView::read(registry);
    let shown: Vec<&CatalogueApi> = apis.iter().filter(|a| matches(a, query)).collect();
    let body = html! {
        h1 { "APIs" }
        p.sub { "What the gateways publish: each " code { "Api" } " with its backend, who may call it and how." }
        form.filters method="get" action="/ui/apis" role="search" {
            label { "Search " input type="search" name="q" value=(query) placeholder="name, owner, path, service…"; }
            button type="submit" { "Search" }
            @if !query.is_empty() { a href="/ui/apis" { "clear" } }
        }
        section #apis data-live {
            @if apis.is_empty() {
                p.empty { "No API is published yet: apply an " code { "Api" } " resource (see docs/gateway.md)." }
            } @else if shown.is_empty() {
                p.empty data-testid="no-match" { "No API matches " code { (query) } "." }
            } @else {
                @if !query.is_empty() {
                    p.muted data-testid="matching" { (shown.len()) " of " (apis.len()) " APIs match " code { (query) } "." }
                }
                table data-testid="apis" {
                    thead {
                        tr {
                            th { "API" } th { "Base path" } th { "Backend" } th { "Auth" } th { "Owner" }
                            th { "SLA (1 h)" } th { "Health" } th { "Consumers" }
                        }
                    }
                    tbody {
                        @for a in &shown { (row(&view, a)) }
                    }
                }
            }
        }
    };
    Page::new("APIs", Nav::Apis, body).stream(STREAM)
}

fn row(view: &ServicesView, a: &CatalogueApi) -> Markup {
    let spec = &a.spec;
    html! {
        tr data-testid="api-row" data-api=(a.name) {
            td {
                a href=(api_href(&a.name)) { (a.name) }
                @if let Some(d) = &spec.description { div.kv { (d) } }
            }
            td {
                span.mono { (spec.base_path) }
                @for h in &spec.hostnames { div.kv.mono { (h) } }
            }
            td { (backend(spec)) }
            td { (auth_kinds(spec).join(", ")) }
            td { (a.owner.as_deref().unwrap_or(NONE)) }
            td data-testid="sla" { (sla(view, spec)) }
            td data-testid="health" { (health(view, spec)) }
            td data-testid="consumers" {
                @if a.consumers.is_empty() { span.muted { "none" } }
                @for (i, c) in a.consumers.iter().enumerate() {
                    @if i > 0 { ", " }
                    (consumer_link(&c.name))
                }
            }
        }
    }
}

/// Where a consumer sends requests: `https://` and the API's first host name (a wildcard's
/// label filled in), else the gateway's address as a placeholder.
fn origin(spec: &ApiSpec) -> String {
    match spec.hostnames.first() {
        Some(h) => match h.strip_prefix("*.") {
            Some(rest) => format!("https://www.{rest}"),
            None => format!("https://{h}"),
        },
        None => GATEWAY.to_owned(),
    }
}

/// A curl line calling `method path` (a full path at the edge) with the API's credential.
fn curl(spec: &ApiSpec, method: &str, path: &str) -> String {
    let mut line = String::from("curl");
    if method != "GET" {
        line += &format!(" -X {method}");
    }
    if let Some(k) = &spec.auth.api_key {
        line += &format!(" -H \"{}: $KEY\"", k.header);
    } else if spec.auth.jwt.is_some() {
        line += " -H \"Authorization: Bearer $TOKEN\"";
    }
    line += &format!(" '{}{path}'", origin(spec));
    line
}

pub(crate) async fn page(registry: &Registry, name: &str) -> Page {
    let api = match registry.api(name).await {
        Ok(a) => a,
        Err(RegistryError::NotFound(_)) => {
            return layout::not_found(
                "API not found",
                html! { "No Api named " code { (name) } " is published. " a href="/ui/apis" { "All APIs" } },
            );
        }
        Err(e) => return layout::failed("the API", &e),
    };
    let document = registry.api_openapi(&api);
    let view = ServicesView::read(registry);
    let body = render(&api, &document, &view);
    Page::new(format!("API {name}"), Nav::Apis, body).stream(STREAM)
}

fn render(a: &CatalogueApi, document: &serde_json::Value, view: &ServicesView) -> Markup {
    let spec = &a.spec;
    let openapi_href = format!("/v1/apis/{}/openapi.json", a.name);
    html! {
        p.sub { a href="/ui/apis" { "APIs" } " / " (a.name) }
        h1 { (a.name) }
        @if let Some(d) = &spec.description { p.sub data-testid="description" { (d) } }
        dl.meta {
            dt { "Base path" } dd.mono data-testid="base-path" { (spec.base_path) }
            dt { "Hosts" }
            dd {
                @if spec.hostnames.is_empty() { span.muted { "any host" } }
                @else { span.mono { (spec.hostnames.join(", ")) } }
            }
            dt { "Backend" } dd { (backend(spec)) }
            dt { "Auth" } dd { (auth_detail(spec)) }
            dt { "Owner" } dd { (a.owner.as_deref().unwrap_or(NONE)) }
            @if let Some(r) = &spec.rate_limit {
                dt { "Rate limit" }
                dd {
                    @if let Some(l) = &r.per_consumer { (l.requests) " per " (l.per) " per consumer" }
                    @if r.per_consumer.is_some() && r.per_api.is_some() { "; " }
                    @if let Some(l) = &r.per_api { (l.requests) " per " (l.per) " for the API" }
                }
            }
            @if let Some(q) = &spec.quota {
                dt { "Quota" } dd { (q.per_consumer.requests) " per " (q.per_consumer.per) " per consumer" }
            }
            dt { "OpenAPI" }
            dd { a href=(openapi_href) data-testid="openapi" { (openapi_href) } }
            dt { "Resource" }
            dd { a href={ "/ui/config/Api/" (a.name) } { "Api/" (a.name) } }
        }
        (operations(a, document))
        (consumers(a))
        (backend_section(spec, view))
    }
}

fn auth_detail(spec: &ApiSpec) -> Markup {
    let a = &spec.auth;
    html! {
        @if let Some(k) = &a.api_key { div { "API key in header " code { (k.header) } } }
        @if let Some(j) = &a.jwt {
            div { "Bearer JWT from " code { (j.issuer) } ", audience " (j.audiences.join(", ")) }
        }
        @if a.anonymous { div { "anonymous calls let in" } }
    }
}

fn operations(a: &CatalogueApi, document: &serde_json::Value) -> Markup {
    let spec = &a.spec;
    let ops = openapi::operations(document);
    let everything = matches!(spec.operations, Operations::Named(_));
    html! {
        h2 { "Operations" }
        @if spec.operations == Operations::Named(OperationSet::FromOpenApi) {
            p.sub { (format::badge("warn", "fromOpenApi")) " The gateway does not read OpenAPI documents yet: it answers this API with 501." }
        }
        @if spec.backend.flow.is_some() {
            p.sub { (format::badge("warn", "flow")) " The gateway does not run flows behind an API yet: it answers with 501." }
        }
        @if everything {
            p.sub data-testid="all-operations" {
                "Every method on every path under " code { (spec.base_path) } " reaches the backend"
                @if ops.is_empty() { "; its service publishes no inline OpenAPI document to list them from." }
                @else { ". Its service's OpenAPI document lists these:" }
            }
        }
        @if !ops.is_empty() {
            table data-testid="operations" {
                thead { tr { th { "Method" } th { "Path" } th { "Summary" } th { "Try it" } } }
                tbody {
                    @for (method, path) in &ops {
                        @let op = &document["paths"][path.as_str()][method.to_ascii_lowercase().as_str()];
                        @let summary = op["summary"].as_str().or_else(|| op["operationId"].as_str()).unwrap_or_default();
                        tr data-testid="operation" {
                            td.mono { (method) }
                            td.mono data-testid="path" { (path) }
                            td { (summary) }
                            td { code data-testid="curl" { (curl(spec, method, path)) } }
                        }
                    }
                }
            }
        } @else if everything {
            p { code data-testid="curl" { (curl(spec, "GET", &openapi::full_path(&spec.base_path, "/"))) } }
        }
        p.muted {
            @if spec.hostnames.is_empty() { code { (GATEWAY) } " is where an " code { "ieum gateway" } " listens (127.0.0.1:7780 by default). " }
            @if spec.auth.api_key.is_some() { code { "$KEY" } " is a consumer's key (" code { "ieum apikey create CONSUMER" } ")." }
            @else if spec.auth.jwt.is_some() { code { "$TOKEN" } " is a JWT from the issuer." }
        }
    }
}

fn consumers(a: &CatalogueApi) -> Markup {
    html! {
        h2 { "Consumers" }
        @if a.consumers.is_empty() {
            p.empty {
                "No " code { "ApiConsumer" } " lists this API"
                @if a.spec.auth.anonymous { ": only anonymous calls get in." } @else { ": no key or token is let in yet." }
            }
        } @else {
            table data-testid="consumers" {
                thead { tr { th { "Consumer" } th { "Who" } } }
                tbody {
                    @for c in &a.consumers {
                        tr data-testid="consumer" data-consumer=(c.name) {
                            td { (consumer_link(&c.name)) }
                            td { (c.description.as_deref().unwrap_or(NONE)) }
                        }
                    }
                }
            }
        }
    }
}

/// How the backend service is doing: instances up, SLA over the last hour, the last
/// minute's signals — the same figures as the services page.
fn backend_section(spec: &ApiSpec, view: &ServicesView) -> Markup {
    let Some(service) = spec.backend.service.as_ref().map(|s| s.as_str()) else {
        return html! {};
    };
    let recent = view.recent.served.get(service);
    html! {
        h2 { "Backend" }
        section #backend data-live {
            p.sub { "Its service now; requests over the last minute, as the sidecars report them." }
            table data-testid="backend" {
                thead {
                    tr {
                        th { "Service" } th { "Instances" } th { "SLA (1 h)" }
                        th.num title="requests per second" { "req/s" }
                        th.num { "success" } th.num { "p50" } th.num { "p99" }
                    }
                }
                tbody {
                    tr {
                        td { (parts::service_link(service)) }
                        td data-testid="health" { (health(view, spec)) }
                        td data-testid="sla" { (sla(view, spec)) }
                        (parts::signal_cells(recent, false, true))
                    }
                }
            }
        }
    }
}
