//! `/ui/config`: every configuration resource, and what the last apply changed (field,
//! old → new, author); `/ui/config/{kind}/{name}`: one resource, its current document and
//! every revision with its diff.

use ieum_model::Timestamp;
use ieum_model::resource::Kind;
use ieum_registry::{Registry, RegistryError};
use ieum_store::StoredResource;
use maud::{Markup, html};

use crate::format;
use crate::layout::{self, Nav, Page};
use crate::parts;

/// Resources listed under "Recent changes".
const RECENT: usize = 15;

struct ListView {
    now: Timestamp,
    resources: Vec<(Kind, Vec<StoredResource>)>,
    /// The resources the last apply wrote, each with its history.
    last_apply: Vec<(StoredResource, Vec<ieum_store::Revision>)>,
    /// Other recent changes, newest first.
    recent: Vec<StoredResource>,
}

/// A `Service` made by an instance's registration (no definition yet), not by an apply.
fn implicit(r: &StoredResource) -> bool {
    r.kind == Kind::Service.as_str()
        && r.revision == 1
        && r.spec.as_object().is_some_and(|o| o.is_empty())
}

async fn read(registry: &Registry) -> Result<ListView, RegistryError> {
    let mut resources = Vec::new();
    for kind in Kind::ALL {
        resources.push((kind, registry.resources(kind).await?));
    }
    let mut all: Vec<&StoredResource> = resources
        .iter()
        .flat_map(|(_, l)| l)
        .filter(|r| !implicit(r))
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
    // One apply is one transaction: its resources share the time and the author.
    let latest = all.first().map(|r| (r.updated_at, r.author.clone()));
    let mut last_apply = Vec::new();
    let mut recent = Vec::new();
    for r in all {
        if latest
            .as_ref()
            .is_some_and(|(t, a)| r.updated_at == *t && r.author == *a)
        {
            let history = match Kind::parse(&r.kind) {
                Some(kind) => registry.history(kind, &r.name).await?,
                None => Vec::new(),
            };
            last_apply.push((r.clone(), history));
        } else if recent.len() < RECENT {
            recent.push(r.clone());
        }
    }
    Ok(ListView {
        now: registry.now(),
        resources,
        last_apply,
        recent,
    })
}

pub(crate) async fn list(registry: &Registry) -> Page {
    match read(registry).await {
        Ok(v) => Page::new("Configuration", Nav::Config, render_list(&v))
            .stream("/v1/events/stream?kind=config.changed,service.created,service.updated"),
        Err(e) => layout::failed("the configuration", &e),
    }
}

fn href(r: &StoredResource) -> String {
    format!("/ui/config/{}/{}", r.kind, r.name)
}

/// What a resource applies to, in words: a route's service, a policy's target.
fn target(r: &StoredResource) -> Markup {
    let t = &r.spec["targetRef"];
    html! {
        @if let Some(s) = r.spec["service"].as_str() {
            "calls to " (parts::service_link(s))
        } @else if let (Some(k), Some(n)) = (t["kind"].as_str(), t["name"].as_str()) {
            @if k == "Service" { (parts::service_link(n)) }
            @else { a href={ "/ui/config/" (k) "/" (n) } { (k) "/" (n) } }
        } @else {
            span.muted { (format::NONE) }
        }
    }
}

fn render_list(v: &ListView) -> Markup {
    html! {
        h1 { "Configuration" }
        section #last-apply data-live {
            h2 { "Last apply" }
            @if let Some((first, _)) = v.last_apply.first() {
                p.sub data-testid="last-apply" {
                    "By " strong data-testid="author" { (first.author) } ", " (format::time(first.updated_at, v.now))
                    ": " (v.last_apply.len()) " resource" @if v.last_apply.len() != 1 { "s" } "."
                }
                @for (r, history) in &v.last_apply {
                    @let diffs = parts::with_diffs(history);
                    h3 {
                        a href=(href(r)) { (r.kind) "/" (r.name) }
                        " " span.muted { "revision " (r.revision) }
                    }
                    @match diffs.first() {
                        Some((_, d)) => (parts::diff_table(d)),
                        None => p.muted { "No history." },
                    }
                }
            } @else {
                p.empty { "Nothing applied yet: " code { "ieum apply -f FILE" } "." }
            }
            @if !v.recent.is_empty() {
                h2 { "Earlier changes" }
                table {
                    thead { tr { th { "Resource" } th.num { "Revision" } th { "When" } th { "By" } } }
                    tbody {
                        @for r in &v.recent {
                            tr {
                                td { a href=(href(r)) { (r.kind) "/" (r.name) } }
                                td.num { (r.revision) }
                                td { (format::time(r.updated_at, v.now)) }
                                td { (r.author) }
                            }
                        }
                    }
                }
            }
        }
        @for (kind, list) in &v.resources {
            h2 { (kind.as_str()) " " span.muted { "(" (list.len()) ")" } }
            @if list.is_empty() {
                p.muted { "None." }
            } @else {
                table data-testid={ "resources-" (kind.as_str()) } {
                    thead { tr { th { "Name" } th { "Applies to" } th.num { "Revision" } th { "Updated" } th { "By" } } }
                    tbody {
                        @for r in list {
                            tr data-testid="resource" {
                                td { a href=(href(r)) { (r.name) } }
                                td { @if *kind == Kind::Service { (parts::service_link(&r.name)) } @else { (target(r)) } }
                                td.num { (r.revision) }
                                td { (format::time(r.updated_at, v.now)) }
                                td { (r.author) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn resource(registry: &Registry, kind: &str, name: &str) -> Page {
    let Some(k) = Kind::parse(kind) else {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        return layout::not_found(
            "Unknown kind",
            html! { code { (kind) } " is not a kind of resource: use " (kinds.join(", ")) "." },
        );
    };
    let current = match registry.resource(k, name).await {
        Ok(r) => Some(r),
        Err(RegistryError::NotFound(_)) => None,
        Err(e) => return layout::failed("the resource", &e),
    };
    let history = match registry.history(k, name).await {
        Ok(h) => h,
        Err(RegistryError::NotFound(_)) => Vec::new(),
        Err(e) => return layout::failed("the history", &e),
    };
    if current.is_none() && history.is_empty() {
        return layout::not_found(
            "Resource not found",
            html! { "No " (k.as_str()) " named " code { (name) } " exists or ever existed." },
        );
    }
    let now = registry.now();
    let document = current.as_ref().map(|r| {
        let doc = serde_json::json!({
            "apiVersion": ieum_model::resource::API_VERSION,
            "kind": k.as_str(),
            "metadata": {"name": r.name, "labels": r.labels},
            "spec": r.spec,
        });
        serde_yaml_ng::to_string(&doc).unwrap_or_else(|e| e.to_string())
    });
    let body = html! {
        p.sub { a href="/ui/config" { "Configuration" } " / " (k.as_str()) }
        h1 { (k.as_str()) "/" (name) }
        @match &current {
            Some(r) => {
                dl.meta {
                    dt { "Revision" } dd { (r.revision) }
                    dt { "Updated" } dd { (format::time(r.updated_at, now)) " by " (r.author) }
                    dt { "Created" } dd { (format::time(r.created_at, now)) }
                    @if k != Kind::Service { dt { "Applies to" } dd { (target(r)) } }
                    @else { dt { "Service" } dd { (parts::service_link(&r.name)) } }
                }
            }
            None => p { (format::badge("bad", "deleted")) " This resource no longer exists; its history remains." },
        }
        @if let Some(doc) = &document {
            details open { summary { "Current document (YAML)" } pre data-testid="document" { (doc) } }
        }
        h2 { "History" }
        section #history data-live { (parts::history(&history, now, true)) }
    };
    Page::new(format!("{}/{name}", k.as_str()), Nav::Config, body)
        .stream("/v1/events/stream?kind=config.changed,service.created,service.updated")
}
