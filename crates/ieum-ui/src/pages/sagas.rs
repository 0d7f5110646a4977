//! `/ui/sagas`: every saga with its executions counted by state, and the latest
//! executions; `/ui/sagas/executions/{id}`: one execution's timeline — steps, attempts
//! with durations and request/response excerpts, compensations, operator actions — and,
//! while it waits for an operator, the buttons (plain forms posting to the API's
//! operator endpoints; they work without script).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ieum_model::Timestamp;
use ieum_saga::{Coordinator, ExecutionView};
use ieum_store::saga::ExecutionQuery;
use maud::{Markup, html};
use serde_json::Value;

use crate::format;
use crate::layout::{self, Nav, Page};

/// Longest excerpt of a body shown.
const EXCERPT: usize = 600;
/// Executions listed on the overview.
const RECENT: u32 = 50;

/// The saga pages, for any outer router state.
pub(crate) fn router<S>(sagas: Option<Coordinator>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/ui/sagas", get(overview))
        .route("/ui/sagas/executions/{id}", get(execution))
        .with_state(sagas)
}

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

fn state_class(state: &str) -> &'static str {
    match state {
        "completed" => "ok",
        "compensated" | "running" | "compensating" => "warn",
        "stuck" | "paused" | "aborted" => "bad",
        _ => "idle",
    }
}

fn no_coordinator() -> Page {
    layout::not_found(
        "Sagas",
        html! { "The saga coordinator is not running on this server." },
    )
}

async fn overview(
    State(sagas): State<Option<Coordinator>>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let Some(c) = sagas else {
        return no_coordinator().into_response();
    };
    let counts = match c.counts().await {
        Ok(c) => c,
        Err(e) => return layout::failed("sagas", &e).into_response(),
    };
    let query = ExecutionQuery {
        saga: q.get("saga").cloned().filter(|s| !s.is_empty()),
        state: q.get("state").cloned().filter(|s| !s.is_empty()),
        limit: RECENT,
    };
    let recent = match c.list(&query).await {
        Ok(r) => r,
        Err(e) => return layout::failed("saga executions", &e).into_response(),
    };
    let now = now();
    let states = ieum_saga::ExecState::ALL;
    let body = html! {
        h1 { "Sagas" }
        @if counts.is_empty() {
            p.empty { "No saga is defined. Apply a " code { "kind: Saga" } " resource, then start one with "
                code { "POST /v1/sagas/NAME/executions" } "." }
        } @else {
            table #sagas {
                thead { tr {
                    th { "Saga" }
                    @for s in states { th.num { (s.as_str()) } }
                    th.num { "total" }
                } }
                tbody {
                    @for row in &counts {
                        tr {
                            td {
                                a href={ "/ui/sagas?saga=" (row.saga) } { (row.saga) }
                                @if !row.defined { " " (format::badge("idle", "deleted")) }
                            }
                            @for s in states {
                                @let n = row.states.get(s.as_str()).copied().unwrap_or(0);
                                td.num {
                                    @if n > 0 {
                                        a href={ "/ui/sagas?saga=" (row.saga) "&state=" (s.as_str()) }
                                          class=(state_class(s.as_str())) { (n) }
                                    } @else { span.muted { "0" } }
                                }
                            }
                            td.num { (row.total) }
                        }
                    }
                }
            }
        }
        h2 {
            "Executions"
            @if let Some(s) = &query.saga { " of " code { (s) } }
            @if let Some(s) = &query.state { " " (format::badge(state_class(s), s)) }
            @if query.saga.is_some() || query.state.is_some() { " " a href="/ui/sagas" { "all" } }
        }
        @if recent.is_empty() {
            p.empty { "None." }
        } @else {
            table #executions {
                thead { tr { th { "Execution" } th { "Saga" } th { "State" } th { "Started" } th { "Last change" } th { "By" } } }
                tbody {
                    @for e in &recent {
                        tr {
                            td { a href={ "/ui/sagas/executions/" (e.id) } { code { (e.id) } } }
                            td { (e.saga) }
                            td { (format::badge(state_class(&e.state), &e.state)) }
                            td { (format::time(e.created_at, now)) }
                            td { (format::time(e.updated_at, now)) }
                            td { (e.author) }
                        }
                    }
                }
            }
        }
    };
    Page::new("Sagas", Nav::Sagas, body).into_response()
}

fn excerpt(v: &Value) -> String {
    let text = match v {
        Value::Null => return String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.len() <= EXCERPT {
        return text;
    }
    let mut cut = EXCERPT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

fn millis_between(a: Timestamp, b: Timestamp) -> String {
    format::millis((b.as_millis() - a.as_millis()).max(0) as f64)
}

/// One line of the timeline: time, what, and the details.
fn record(v: &ExecutionView, i: usize, now: Timestamp) -> Markup {
    let r = &v.log[i];
    let step = r.step.clone().unwrap_or_default();
    let d = &r.data;
    let phase = d["phase"].as_str().unwrap_or("");
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let what = match r.kind.as_str() {
        "call.started" | "call.finished" => format!("{phase} {step}"),
        "execution.started" => "started".into(),
        "state" => "state".into(),
        "request" => format!("requested {}", s("op")),
        "request.applied" => format!("{} applied", s("op")),
        "request.ignored" => format!("{} ignored", s("op")),
        other => other.to_owned(),
    };
    let class = match r.kind.as_str() {
        "call.finished" => match d["verdict"].as_str().unwrap_or("") {
            "completed" | "compensated" => "ok",
            "retry" => "warn",
            _ => "bad",
        },
        "state" => state_class(d["to"].as_str().unwrap_or("")),
        "request" | "request.applied" => "warn",
        _ => "idle",
    };
    html! {
        li data-kind=(r.kind) {
            span { (format::time(r.at, now)) }
            span { span class={ "badge kind " (class) } { (what) } }
            span {
                @match r.kind.as_str() {
                    "execution.started" => { "by " (s("author")) " (revision " (d["revision"]) ")" }
                    "call.started" => {
                        "attempt " (d["attempt"]) " · "
                        code { (d["request"]["method"].as_str().unwrap_or("")) " " (d["request"]["url"].as_str().unwrap_or("")) }
                        " · key " code { (s("idempotencyKey")) }
                        @if d["resumed"] == true { " " (format::badge("warn", "sent again after a restart")) }
                        @let body = excerpt(&d["request"]["body"]);
                        @if !body.is_empty() { details { summary { "request body" } pre { (body) } } }
                    }
                    "call.finished" => {
                        @let res = &d["result"];
                        "attempt " (d["attempt"]) ": " strong { (d["verdict"].as_str().unwrap_or("")) }
                        " · " (res["outcome"].as_str().unwrap_or(""))
                        @if let Some(code) = res["status"].as_u64() { " " code { (code) } }
                        " · " (format::millis(res["durationMs"].as_f64().unwrap_or(0.0)))
                        @if let Some(e) = res["error"].as_str() { " · " span.muted { (e) } }
                        @if let Some(t) = d["retryAt"].as_i64() { " · next try " (format::time(Timestamp::from_millis(t), now)) }
                        @let body = excerpt(&res["body"]);
                        @if !body.is_empty() { details { summary { "response body" } pre { (body) } } }
                    }
                    "state" => { "→ " strong { (s("to")) } " · " (s("reason")) }
                    "request" => { "by " (s("author")) }
                    "request.applied" => {
                        @if !step.is_empty() { "to " (step) " · " }
                        "requested by " (s("author"))
                    }
                    "request.ignored" => { (s("reason")) " · requested by " (s("author")) }
                    _ => { code { (excerpt(d)) } }
                }
            }
        }
    }
}

async fn execution(State(sagas): State<Option<Coordinator>>, Path(id): Path<String>) -> Response {
    let Some(c) = sagas else {
        return no_coordinator().into_response();
    };
    let v = match c.execution(&id).await {
        Ok(v) => v,
        Err(ieum_saga::Error::NotFound(_)) => {
            return layout::not_found(
                "Execution not found",
                html! { "There is no saga execution " code { (id) } "." },
            )
            .into_response();
        }
        Err(e) => return layout::failed("the execution", &e).into_response(),
    };
    let now = now();
    let actions: &[(&str, &str)] = match v.state.as_str() {
        "running" => &[("cancel", "Cancel (compensate)")],
        "paused" => &[
            ("retry", "Retry the step"),
            ("skip", "Skip the step"),
            ("abort", "Abort (compensate)"),
        ],
        "stuck" => &[
            ("retry", "Retry the compensation"),
            ("skip", "Skip the compensation"),
            ("abort", "Abort (leave the rest)"),
        ],
        _ => &[],
    };
    // Durations of the steps' actions: first attempt to last answer.
    let span = |step: &str, phase: &str| {
        let times: Vec<Timestamp> = v
            .log
            .iter()
            .filter(|r| {
                r.step.as_deref() == Some(step)
                    && r.data["phase"] == phase
                    && r.kind.starts_with("call.")
            })
            .map(|r| r.at)
            .collect();
        match (times.first(), times.last()) {
            (Some(a), Some(b)) if times.len() > 1 => millis_between(*a, *b),
            _ => String::new(),
        }
    };
    let body = html! {
        h1 { "Execution " code { (v.id) } " " (format::badge(state_class(&v.state), &v.state)) }
        dl.meta {
            dt { "Saga" } dd { a href={ "/ui/sagas?saga=" (v.saga) } { (v.saga) } " (revision " (v.revision) ")" }
            dt { "Started" } dd { (format::time(v.created_at, now)) " by " (v.author) }
            dt { "Last change" } dd { (format::time(v.updated_at, now)) }
            @if let Some(k) = &v.idempotency_key { dt { "Idempotency-Key" } dd { code { (k) } } }
            dt { "Trace" } dd { code { (v.trace_id) } }
            @if let Some(o) = &v.owner { dt { "Coordinator" } dd { (o) } }
        }
        @if !actions.is_empty() {
            div.actions #actions {
                @for (op, label) in actions {
                    form method="post" action={ "/v1/sagas/executions/" (v.id) "/" (op) } style="display:inline" {
                        button type="submit" name="op" value=(op) { (label) }
                    }
                    " "
                }
            }
        }
        h2 { "Steps" }
        table #steps {
            thead { tr { th { "Step" } th { "Action" } th.num { "Attempts" } th { "Took" } th { "Compensation" } th.num { "Attempts" } th { "Took" } } }
            tbody {
                @for s in &v.steps {
                    @let status = serde_json::to_value(s.status).ok().and_then(|x| x.as_str().map(str::to_owned)).unwrap_or_default();
                    tr {
                        td { (s.name) }
                        td { (format::badge(match status.as_str() { "completed" | "skipped" => "ok", "pending" => "idle", "running" => "warn", _ => "bad" }, &status)) }
                        td.num { (s.attempts) }
                        td { (span(&s.name, "action")) }
                        td { (format::badge(match s.compensation.as_str() { "done" => "ok", "pending" => "warn", "none" => "idle", _ => "bad" }, &s.compensation)) }
                        td.num { (s.compensation_attempts) }
                        td { (span(&s.name, "compensation")) }
                    }
                }
            }
        }
        h2 { "Input" }
        pre { (excerpt(&v.input)) }
        h2 { "Timeline" }
        ol.timeline #log {
            @for i in 0..v.log.len() { (record(&v, i, now)) }
        }
    };
    Page::new(format!("Execution {}", v.id), Nav::Sagas, body).into_response()
}
