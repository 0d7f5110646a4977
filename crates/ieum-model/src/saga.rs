//! The `Saga` resource: steps, each an action and the compensation that undoes it, run by
//! the saga coordinator (`ieum-saga`) with a durable log.
//!
//! ```yaml
//! kind: Saga
//! metadata: {name: trip}
//! spec:
//!   steps:
//!   - name: flight
//!     action: {service: flights, method: POST, path: /book, body: "${input.flight}"}
//!     compensation: {service: flights, method: POST, path: "/cancel/${steps.flight.body.id}"}
//!     timeouts: {request: 10s, backendRequest: 2s}
//!     retry: {attempts: 3, backoff: 100ms}
//!     onFailure: compensate        # or pause
//!   compensation: {retry: {backoff: 1s, maxBackoff: 1m}, stuckAfter: 20}
//! ```
//!
//! Validation codes `E28xx` (see `docs/errors.md`); a step's `timeouts` use the policy
//! codes `E2101`/`E2102`. [`Call`] is shared with `Flow` (`crate::flow`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::policy::Timeouts;
use crate::template;
use crate::{Duration, Name, Validator};

/// Most steps in one saga or flow.
pub const MAX_STEPS: usize = 64;
/// Most failed attempts of one compensation before the execution is `stuck`.
pub const MAX_STUCK_AFTER: u32 = 1000;
/// Variables a saga's templates may read.
pub const SAGA_VARIABLES: [&str; 3] = ["input", "steps", "execution"];

/// The spec of a `Saga`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaSpec {
    /// The steps, run in order; on failure the completed ones are compensated in reverse.
    pub steps: Vec<SagaStep>,
    /// How compensations are retried, and when an operator is needed.
    #[serde(default)]
    pub compensation: CompensationPolicy,
}

/// One step: a call that does something, and the call that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStep {
    /// Unique within the saga; templates read the step's result as `steps.NAME`.
    #[schema(value_type = String)]
    pub name: Name,
    /// The call that does the step's work.
    pub action: Call,
    /// The call that undoes it; absent when there is nothing to undo (a read, a
    /// notification). It must be idempotent: it may run after an action in doubt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Call>,
    /// `request` bounds the action with its retries, `backendRequest` each attempt (and
    /// each compensation attempt).
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries of the action.
    #[serde(default)]
    pub retry: StepRetry,
    /// What happens when the action finally fails.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// An HTTP call to a service, by logical name, through the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Call {
    /// The service called (its routes and policies apply).
    #[schema(value_type = String)]
    pub service: Name,
    /// The HTTP method.
    pub method: String,
    /// The path and query, a template (`/cancel/${steps.flight.body.id}`).
    pub path: String,
    /// Request headers; values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body; every string in it is a template (`"${input.flight}"` is the value
    /// itself). Absent: no body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub body: Option<serde_json::Value>,
}

/// What a saga does when a step's action finally fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Compensate the completed steps (and one in doubt), in reverse order.
    #[default]
    Compensate,
    /// Wait for an operator: retry the step, skip it, or abort (compensate).
    Pause,
}

/// Retries of a step's action (the common retry shape, with the saga's defaults: two
/// retries from 100 ms on connection errors, 5xx, 408 and 429). Every attempt carries the
/// same `Idempotency-Key`, so a participant applies the step once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRetry {
    /// Status codes worth another try; absent: 408, 429 and every 5xx. Other statuses
    /// are the service's answer (a business failure) and are not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u16>>,
    /// Retries after the first try; `0` disables retrying.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Base of the exponential backoff (full jitter).
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// Cap of one wait.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

fn default_attempts() -> u32 {
    2
}

fn default_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}

impl Default for StepRetry {
    fn default() -> Self {
        StepRetry {
            codes: None,
            attempts: default_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl StepRetry {
    /// Whether an answer with `status` from the service is worth another attempt.
    pub fn retries_status(&self, status: u16) -> bool {
        match &self.codes {
            Some(codes) => codes.contains(&status),
            None => status == 408 || status == 429 || (500..=599).contains(&status),
        }
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        for (i, code) in self.codes.iter().flatten().enumerate() {
            v.check(
                (400..=599).contains(code),
                "E2807",
                &format!("codes[{i}]"),
                || format!("{code} is not an error status: use codes between 400 and 599"),
            );
        }
        v.check(
            self.attempts <= crate::policy::MAX_RETRY_ATTEMPTS,
            "E2807",
            "attempts",
            || format!("must be at most 10 (is {})", self.attempts),
        );
        check_backoff(v, self.backoff, self.max_backoff);
    }
}

fn check_backoff(v: &mut Validator, backoff: Duration, max: Duration) {
    v.check(
        !backoff.is_zero() && backoff <= max,
        "E2808",
        "backoff",
        || format!("must be above 0s and at most maxBackoff {max} (is {backoff})"),
    );
    v.check(
        max <= Duration::from_secs(3600),
        "E2808",
        "maxBackoff",
        || format!("must be at most 1h (is {max})"),
    );
}

/// How compensations are retried: until they succeed, with backoff; after `stuckAfter`
/// failed attempts of one compensation the execution is `stuck` until an operator acts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompensationPolicy {
    /// Backoff between attempts of one compensation.
    #[serde(default)]
    pub retry: CompensationRetry,
    /// Failed attempts of one compensation before the execution waits for an operator.
    #[serde(default = "default_stuck_after")]
    pub stuck_after: u32,
}

fn default_stuck_after() -> u32 {
    20
}

impl Default for CompensationPolicy {
    fn default() -> Self {
        CompensationPolicy {
            retry: CompensationRetry::default(),
            stuck_after: default_stuck_after(),
        }
    }
}

/// Backoff of compensation attempts (full jitter, exponential from `backoff` to
/// `maxBackoff`). There is no `attempts`: compensations are retried until they succeed
/// or `stuckAfter` hands them to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompensationRetry {
    /// Base of the exponential backoff.
    #[serde(default = "default_comp_backoff")]
    pub backoff: Duration,
    /// Cap of one wait.
    #[serde(default = "default_comp_max_backoff")]
    pub max_backoff: Duration,
}

fn default_comp_backoff() -> Duration {
    Duration::from_secs(1)
}

fn default_comp_max_backoff() -> Duration {
    Duration::from_secs(60)
}

impl Default for CompensationRetry {
    fn default() -> Self {
        CompensationRetry {
            backoff: default_comp_backoff(),
            max_backoff: default_comp_max_backoff(),
        }
    }
}

pub(crate) const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

pub(crate) fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Call {
    /// Checks the call; `earlier` are the steps whose results its templates may read,
    /// `variables` the variables they may use.
    pub fn validate(&self, v: &mut Validator, earlier: &BTreeSet<String>, variables: &[&str]) {
        v.check(
            METHODS.contains(&self.method.as_str()),
            "E2804",
            "method",
            || {
                format!(
                    "`{}` is not an HTTP method: use one of {}",
                    self.method,
                    METHODS.join(", ")
                )
            },
        );
        v.check(self.path.starts_with('/'), "E2803", "path", || {
            format!("`{}` must start with `/`", self.path)
        });
        let mut templates = vec![("path".to_owned(), self.path.clone())];
        for (name, value) in &self.headers {
            v.check(
                valid_header_name(name) && !name.eq_ignore_ascii_case("idempotency-key"),
                "E2805",
                &format!("headers.{name}"),
                || {
                    format!(
                        "`{name}` is not a header you can set here (a token; `Idempotency-Key` is set by ieum)"
                    )
                },
            );
            templates.push((format!("headers.{name}"), value.clone()));
        }
        if let Some(body) = &self.body {
            template::strings_in(body, &mut templates, "body");
        }
        for (field, text) in templates {
            check_template(v, &field, &text, earlier, variables);
        }
    }
}

/// Checks one template: syntax, variables, and that the steps it reads come earlier.
pub(crate) fn check_template(
    v: &mut Validator,
    field: &str,
    text: &str,
    earlier: &BTreeSet<String>,
    variables: &[&str],
) {
    match template::check(text, variables) {
        Err(e) => v.error("E2806", field, e),
        Ok(t) => {
            for e in t.exprs() {
                for step in template::steps_read(e) {
                    v.check(earlier.contains(&step), "E2809", field, || {
                        format!(
                            "`{e}` reads step `{step}`, which has not run at this point: a template reads only earlier steps"
                        )
                    });
                }
            }
        }
    }
}

impl SagaSpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        v.check(
            !self.steps.is_empty() && self.steps.len() <= MAX_STEPS,
            "E2801",
            "steps",
            || {
                format!(
                    "a saga has 1 to {MAX_STEPS} steps (has {})",
                    self.steps.len()
                )
            },
        );
        let mut seen = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            v.nested(&format!("steps[{i}]"), |v| {
                let name = step.name.as_str().to_owned();
                v.check(!seen.contains(&name), "E2802", "name", || {
                    format!("`{name}` names two steps: step names are unique")
                });
                v.nested("action", |v| {
                    step.action.validate(v, &seen, &SAGA_VARIABLES)
                });
                // A compensation reads its own step's result as well.
                let mut with_own = seen.clone();
                with_own.insert(name.clone());
                if let Some(c) = &step.compensation {
                    v.nested("compensation", |v| {
                        c.validate(v, &with_own, &SAGA_VARIABLES)
                    });
                }
                v.nested("timeouts", |v| step.timeouts.validate(v));
                v.nested("retry", |v| step.retry.validate(v));
                seen.insert(name);
            });
        }
        v.nested("compensation", |v| {
            v.check(
                (1..=MAX_STUCK_AFTER).contains(&self.compensation.stuck_after),
                "E2810",
                "stuckAfter",
                || {
                    format!(
                        "must be between 1 and {MAX_STUCK_AFTER} (is {})",
                        self.compensation.stuck_after
                    )
                },
            );
            v.nested("retry", |v| {
                check_backoff(
                    v,
                    self.compensation.retry.backoff,
                    self.compensation.retry.max_backoff,
                );
            });
        });
    }

    /// The services the saga calls, for the timelines of those services.
    pub fn services(&self) -> Vec<Name> {
        let mut out: Vec<Name> = Vec::new();
        for s in &self.steps {
            for c in std::iter::once(&s.action).chain(s.compensation.as_ref()) {
                if !out.contains(&c.service) {
                    out.push(c.service.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::resource::{check, parse_documents};

    fn errors(spec: &str) -> Vec<String> {
        let text =
            format!("apiVersion: ieum.dev/v1\nkind: Saga\nmetadata: {{name: trip}}\nspec:\n{spec}");
        match check(&parse_documents(&text).unwrap()[0]) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .iter()
                .map(|e| format!("{} {}", e.code, e.field))
                .collect(),
        }
    }

    #[test]
    fn the_config_language_example_checks_and_normalizes() {
        let text = r#"
apiVersion: ieum.dev/v1
kind: Saga
metadata: {name: trip}
spec:
  steps:
  - name: flight
    action: {service: flights, method: POST, path: /book, body: "${input.flight}"}
    compensation: {service: flights, method: POST, path: "/cancel/${steps.flight.body.id}"}
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {attempts: 3, backoff: 100ms}
  - name: hotel
    action: {service: hotels, method: POST, path: /book, body: {guest: "${input.name}", nights: 2}}
    compensation: {service: hotels, method: POST, path: "/cancel/${steps.hotel.body.id}"}
  - name: payment
    action: {service: payments, method: POST, path: /charge, body: "${input.payment}"}
    compensation: {service: payments, method: POST, path: /refund}
    onFailure: pause
  compensation: {retry: {backoff: 1s, maxBackoff: 1m}, stuckAfter: 20}
"#;
        let checked = check(&parse_documents(text).unwrap()[0]).unwrap();
        assert_eq!(checked.id(), "Saga/trip");
        let names: Vec<_> = checked.services.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["flights", "hotels", "payments"]);
        // Defaults are written out: the saga's retry defaults, not a route's.
        assert_eq!(checked.spec["steps"][1]["retry"]["attempts"], 2);
        assert_eq!(checked.spec["steps"][1]["retry"]["backoff"], "100ms");
        assert_eq!(checked.spec["steps"][0]["onFailure"], "compensate");
        assert_eq!(checked.spec["steps"][2]["onFailure"], "pause");
    }

    #[test]
    fn bad_sagas_are_explained_field_by_field() {
        let got = errors(
            r#"  steps:
  - name: a
    action: {service: s, method: FETCH, path: book, headers: {"bad header": x, Idempotency-Key: y}}
    compensation: {service: s, method: POST, path: "/c/${steps.b.body.id}"}
    retry: {attempts: 11, backoff: 0s, codes: [200]}
  - name: a
    action: {service: s, method: POST, path: "/x/${input.id", body: {x: "${inputs.y}"}}
    timeouts: {request: 1s, backendRequest: 2s}
  compensation: {stuckAfter: 0}
"#,
        );
        assert_eq!(
            got,
            [
                "E2804 spec.steps[0].action.method",
                "E2803 spec.steps[0].action.path",
                "E2805 spec.steps[0].action.headers.Idempotency-Key",
                "E2805 spec.steps[0].action.headers.bad header",
                "E2809 spec.steps[0].compensation.path",
                "E2807 spec.steps[0].retry.codes[0]",
                "E2807 spec.steps[0].retry.attempts",
                "E2808 spec.steps[0].retry.backoff",
                "E2802 spec.steps[1].name",
                "E2806 spec.steps[1].action.path",
                "E2806 spec.steps[1].action.body.x",
                "E2102 spec.steps[1].timeouts.backendRequest",
                "E2810 spec.compensation.stuckAfter",
            ]
        );
        assert_eq!(errors("  steps: []\n"), ["E2801 spec.steps"]);
        assert_eq!(
            errors(
                "  steps:\n  - {name: a, action: {service: s, method: GET, path: /}, onFailure: retry}\n"
            ),
            ["E1005 spec.steps[0].onFailure"]
        );
    }
}
