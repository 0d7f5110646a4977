//! `Flow`: stateless orchestration answered synchronously. Steps run in order; a
//! `parallel` group runs its calls at once and waits for all; a step whose `if` is false
//! is skipped; the output is assembled from the results. Nothing is logged: a flow is a
//! request, and its caller retries it.

use std::time::Duration;

use ieum_model::flow::{FlowCall, FlowSpec, condition_expr};
use ieum_model::saga::StepRetry;
use serde_json::{Value, json};

use crate::call::{Attempt, OutRequest, Outcome};
use crate::coordinator::Coordinator;
use crate::expr::{self, Scope};

/// Why a flow did not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// No such flow.
    #[error("{0}")]
    NotFound(String),
    /// The stored flow cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// A template or condition could not be evaluated with this input.
    #[error("step `{step}`: {message}")]
    Expression {
        /// The step (or `output`).
        step: String,
        /// Why.
        message: String,
    },
    /// A call that is not optional failed.
    #[error("step `{step}` failed: {message}")]
    StepFailed {
        /// The step.
        step: String,
        /// Its last answer's status, if the service answered.
        status: Option<u16>,
        /// What happened.
        message: String,
        /// Its last answer's body.
        body: Value,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] ieum_store::StoreError),
}

/// Runs flows; a name for the flow half of [`Coordinator`].
pub type Flows = Coordinator;

/// The result of one call of a flow.
struct Done {
    name: String,
    optional: bool,
    attempt: Option<Attempt>,
}

impl Coordinator {
    /// Runs the flow `name` with `input`; `traceparent` continues the caller's trace.
    pub async fn run_flow(
        &self,
        name: &str,
        input: Value,
        traceparent: Option<String>,
    ) -> Result<Value, FlowError> {
        let stored = self.store().resource("Flow", name).await?.ok_or_else(|| {
            FlowError::NotFound(format!("Flow/{name} does not exist: apply it first"))
        })?;
        let spec: FlowSpec = serde_json::from_value(stored.spec)
            .map_err(|e| FlowError::Invalid(format!("Flow/{name} cannot be read: {e}")))?;
        let run = format!("{name}-{:016x}", rand::random::<u64>());
        let trace = traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .map_or_else(|| format!("{:032x}", rand::random::<u128>()), str::to_owned);
        let mut steps = serde_json::Map::new();
        for step in &spec.steps {
            let scope = Scope::new(&input, Value::Object(steps.clone()));
            let mut todo = Vec::new();
            for c in step.calls() {
                let run_it = match &c.condition {
                    None => true,
                    Some(cond) => expr::condition(condition_expr(cond), &scope).map_err(|m| {
                        FlowError::Expression {
                            step: c.name.to_string(),
                            message: m,
                        }
                    })?,
                };
                if run_it {
                    let req = self.flow_request(&c, &scope, &run, &trace)?;
                    todo.push((c, req));
                } else {
                    steps.insert(c.name.to_string(), json!({"skipped": true}));
                }
            }
            let results = futures_util::future::join_all(
                todo.into_iter()
                    .map(|(c, req)| async move {
                        let retry = c.retry.clone().unwrap_or_default();
                        let timeout = c.timeouts.map_or(Duration::from_secs(15), |t| {
                            if t.backend_request.is_zero() {
                                t.request.get()
                            } else {
                                t.backend_request.get()
                            }
                        });
                        let attempt = self.flow_call(&req, &retry, timeout).await;
                        Done {
                            name: c.name.to_string(),
                            optional: c.optional,
                            attempt: Some(attempt),
                        }
                    })
                    .collect::<Vec<_>>(),
            )
            .await;
            for d in results {
                let Some(a) = d.attempt else { continue };
                if a.outcome != Outcome::Ok && !d.optional {
                    return Err(FlowError::StepFailed {
                        step: d.name,
                        status: a.status,
                        message: a.error.clone().unwrap_or_else(|| {
                            format!("the service answered {}", a.status.unwrap_or(0))
                        }),
                        body: a.body,
                    });
                }
                let headers: serde_json::Map<String, Value> = a
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                steps.insert(
                    d.name,
                    json!({"status": a.status, "ok": a.outcome == Outcome::Ok, "headers": headers, "body": a.body}),
                );
            }
        }
        let scope = Scope::new(&input, Value::Object(steps.clone()));
        match &spec.output {
            Some(output) => expr::render_json(output, &scope).map_err(|m| FlowError::Expression {
                step: "output".into(),
                message: m,
            }),
            None => Ok(Value::Object(
                steps
                    .into_iter()
                    .map(|(k, v)| (k, v["body"].clone()))
                    .collect(),
            )),
        }
    }

    fn flow_request(
        &self,
        c: &FlowCall,
        scope: &Scope,
        run: &str,
        trace: &str,
    ) -> Result<OutRequest, FlowError> {
        let err = |m: String| FlowError::Expression {
            step: c.name.to_string(),
            message: m,
        };
        let path = expr::render_text(&c.call.path, scope).map_err(err)?;
        let mut headers = Vec::new();
        for (k, v) in &c.call.headers {
            headers.push((k.clone(), expr::render_text(v, scope).map_err(err)?));
        }
        headers.push(("idempotency-key".into(), format!("{run}:{}", c.name)));
        headers.push((
            "traceparent".into(),
            format!("00-{trace}-{:016x}-01", rand::random::<u64>()),
        ));
        let body = c
            .call
            .body
            .as_ref()
            .map(|b| expr::render_json(b, scope))
            .transpose()
            .map_err(err)?;
        Ok(OutRequest {
            service: c.call.service.to_string(),
            method: c.call.method.clone(),
            path,
            headers,
            body,
        })
    }

    async fn flow_call(&self, req: &OutRequest, retry: &StepRetry, timeout: Duration) -> Attempt {
        let mut n = 0;
        loop {
            n += 1;
            let a = self.caller().send(req, timeout).await;
            let again = match a.outcome {
                Outcome::Ok | Outcome::Unsendable => false,
                Outcome::Answered => a.status.is_some_and(|s| retry.retries_status(s)),
                Outcome::NotSent | Outcome::InDoubt => true,
            };
            if !again || n > retry.attempts {
                return a;
            }
            let cap = retry
                .backoff
                .get()
                .saturating_mul(1 << (n - 1).min(20))
                .min(retry.max_backoff.get());
            let ms = u64::try_from(cap.as_millis()).unwrap_or(1).max(1);
            tokio::time::sleep(Duration::from_millis(rand::random_range(1..=ms))).await;
        }
    }
}
