//! The `Flow` resource: a stateless orchestration answered synchronously at
//! `POST /v1/flows/{name}` — steps calling services by name, in sequence or in `parallel`
//! groups, each optionally under a condition (`if`), and an output assembled from their
//! results.
//!
//! ```yaml
//! kind: Flow
//! metadata: {name: order-summary}
//! spec:
//!   steps:
//!   - parallel:
//!     - {name: order, call: {service: orders, method: GET, path: "/orders/${input.id}"}}
//!     - {name: shipment, call: {service: shipping, method: GET, path: "/shipments?order=${input.id}"}}
//!   - name: invoice
//!     if: "steps.order.body.paid"
//!     call: {service: billing, method: GET, path: "/invoices/${steps.order.body.invoice}"}
//!   output: {order: "${steps.order.body}", shipment: "${steps.shipment.body}"}
//! ```
//!
//! Validation codes `E29xx`; calls share the saga's `E2803`–`E2809`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::policy::Timeouts;
use crate::saga::{Call, MAX_STEPS, StepRetry, check_template};
use crate::{Name, Validator, template};

/// Variables a flow's templates and conditions may read.
pub const FLOW_VARIABLES: [&str; 2] = ["input", "steps"];

/// The spec of a `Flow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowSpec {
    /// Steps in order; a `parallel` group runs its calls at once and waits for all.
    pub steps: Vec<FlowStep>,
    /// The answer: a JSON value whose strings are templates. Absent: every step's body by
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
}

/// A step of a flow: one call, or a group of calls run in parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowStep {
    /// The step's name (with `call`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Name>,
    /// The call (or `parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Call>,
    /// Calls run at once (or `call`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Vec<FlowCall>>,
    /// A CEL condition; the step is skipped when it is false.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Timeouts of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<StepRetry>,
    /// When true, a failed call does not fail the flow: later steps see its status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// One call of a `parallel` group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowCall {
    /// The step's name.
    #[schema(value_type = String)]
    pub name: Name,
    /// The call.
    pub call: Call,
    /// A CEL condition; the call is skipped when it is false.
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Timeouts of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<StepRetry>,
    /// When true, a failed call does not fail the flow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl FlowStep {
    /// The calls of this step: one, or the parallel group's (empty when malformed).
    pub fn calls(&self) -> Vec<FlowCall> {
        if let Some(group) = &self.parallel {
            return group.clone();
        }
        match (&self.name, &self.call) {
            (Some(name), Some(call)) => vec![FlowCall {
                name: name.clone(),
                call: call.clone(),
                condition: self.condition.clone(),
                timeouts: self.timeouts,
                retry: self.retry.clone(),
                optional: self.optional,
            }],
            _ => Vec::new(),
        }
    }
}

/// Strips an optional `${…}` around a condition.
pub fn condition_expr(text: &str) -> &str {
    let t = text.trim();
    match t.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(inner) if !inner.contains("${") => inner.trim(),
        _ => t,
    }
}

fn check_call(v: &mut Validator, c: &FlowCall, earlier: &BTreeSet<String>) {
    v.nested("call", |v| c.call.validate(v, earlier, &FLOW_VARIABLES));
    if let Some(cond) = &c.condition {
        let expr = condition_expr(cond);
        match template::check_expr(expr, &FLOW_VARIABLES) {
            Err(e) => v.error("E2904", "if", e),
            Ok(()) => {
                for step in template::steps_read(expr) {
                    v.check(earlier.contains(&step), "E2809", "if", || {
                        format!("`{expr}` reads step `{step}`, which has not run at this point")
                    });
                }
            }
        }
    }
    if let Some(t) = &c.timeouts {
        v.nested("timeouts", |v| t.validate(v));
    }
    if let Some(r) = &c.retry {
        v.nested("retry", |v| r.validate(v));
    }
}

impl FlowSpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        let count: usize = self
            .steps
            .iter()
            .map(|s| s.parallel.as_ref().map_or(1, Vec::len))
            .sum();
        v.check(
            !self.steps.is_empty() && count <= MAX_STEPS,
            "E2901",
            "steps",
            || format!("a flow has 1 to {MAX_STEPS} calls (has {count})"),
        );
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            v.nested(&format!("steps[{i}]"), |v| {
                match (&step.parallel, &step.call) {
                    (Some(group), None) => {
                        v.check(
                            step.name.is_none()
                                && step.condition.is_none()
                                && step.timeouts.is_none()
                                && step.retry.is_none()
                                && !step.optional,
                            "E2903",
                            "parallel",
                            || "a parallel group has only `parallel`: put name, if, timeouts and retry on its calls".into(),
                        );
                        v.check(!group.is_empty(), "E2903", "parallel", || {
                            "a parallel group needs at least one call".into()
                        });
                        let mut group_names = Vec::new();
                        for (j, c) in group.iter().enumerate() {
                            v.nested(&format!("parallel[{j}]"), |v| {
                                let name = c.name.as_str().to_owned();
                                v.check(
                                    !seen.contains(&name) && !group_names.contains(&name),
                                    "E2902",
                                    "name",
                                    || format!("`{name}` names two steps: step names are unique"),
                                );
                                // Calls of one group run at once: none reads another.
                                check_call(v, c, &seen);
                                group_names.push(name);
                            });
                        }
                        seen.extend(group_names);
                    }
                    (None, Some(_)) => match &step.name {
                        None => v.error("E2903", "name", "a step with `call` needs a `name`"),
                        Some(name) => {
                            let name = name.as_str().to_owned();
                            v.check(!seen.contains(&name), "E2902", "name", || {
                                format!("`{name}` names two steps: step names are unique")
                            });
                            for c in step.calls() {
                                check_call(v, &c, &seen);
                            }
                            seen.insert(name);
                        }
                    },
                    _ => v.error(
                        "E2903",
                        "",
                        "a step has exactly one of `call` (with `name`) and `parallel`",
                    ),
                }
            });
        }
        if let Some(output) = &self.output {
            let mut templates = Vec::new();
            template::strings_in(output, &mut templates, "output");
            for (field, text) in templates {
                check_template(v, &field, &text, &seen, &FLOW_VARIABLES);
            }
        }
    }

    /// The services the flow calls.
    pub fn services(&self) -> Vec<Name> {
        let mut out: Vec<Name> = Vec::new();
        for s in &self.steps {
            for c in s.calls() {
                if !out.contains(&c.call.service) {
                    out.push(c.call.service);
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
            format!("apiVersion: ieum.dev/v1\nkind: Flow\nmetadata: {{name: f}}\nspec:\n{spec}");
        match check(&parse_documents(&text).unwrap()[0]) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .iter()
                .map(|e| format!("{} {}", e.code, e.field))
                .collect(),
        }
    }

    #[test]
    fn the_config_language_example_checks() {
        let spec = r#"  steps:
  - parallel:
    - {name: order, call: {service: orders, method: GET, path: "/orders/${input.id}"}}
    - {name: shipment, call: {service: shipping, method: GET, path: "/shipments?order=${input.id}"}}
  - name: invoice
    if: "${steps.order.body.paid == true}"
    call: {service: billing, method: GET, path: "/invoices/${steps.order.body.invoice}"}
  output: {order: "${steps.order.body}", shipment: "${steps.shipment.body}"}
"#;
        assert!(errors(spec).is_empty(), "{:?}", errors(spec));
    }

    #[test]
    fn bad_flows_are_explained_field_by_field() {
        let got = errors(
            r#"  steps:
  - parallel:
    - {name: a, call: {service: s, method: GET, path: /a}}
    - {name: b, call: {service: s, method: GET, path: "/b/${steps.a.body}"}}
  - {name: a, call: {service: s, method: GET, path: /}, if: "steps.a.status ==", parallel: []}
  - {call: {service: s, method: GET, path: /}}
  - {name: c, call: {service: s, method: GET, path: /}, if: "steps.zz.status == 200"}
  output: {x: "${steps.nope.body}"}
"#,
        );
        assert_eq!(
            got,
            [
                "E2809 spec.steps[0].parallel[1].call.path",
                "E2903 spec.steps[1]",
                "E2903 spec.steps[2].name",
                "E2809 spec.steps[3].if",
                "E2809 spec.output.x",
            ]
        );
    }
}
