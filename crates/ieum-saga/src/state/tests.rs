//! The state machine alone: decisions from logs, without I/O.

use std::time::Duration;

use ieum_model::Timestamp;
use ieum_model::saga::SagaSpec;
use serde_json::{Value, json};

use super::*;
use crate::call::{Attempt, Outcome};

fn spec(yaml: &str) -> SagaSpec {
    let docs = ieum_model::resource::parse_documents(&format!(
        "apiVersion: ieum.dev/v1\nkind: Saga\nmetadata: {{name: s}}\nspec:\n{yaml}"
    ))
    .unwrap();
    let checked = ieum_model::resource::check(&docs[0]).unwrap();
    serde_json::from_value(checked.spec).unwrap()
}

const THREE: &str = "  steps:
  - {name: a, action: {service: x, method: POST, path: /a}, compensation: {service: x, method: POST, path: /ua}}
  - {name: b, action: {service: x, method: POST, path: /b}, compensation: {service: x, method: POST, path: /ub}, retry: {attempts: 1}}
  - {name: c, action: {service: x, method: POST, path: /c}, compensation: {service: x, method: POST, path: /uc}, onFailure: pause}
  compensation: {stuckAfter: 2}
";

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + ms)
}

fn answer(outcome: Outcome, status: Option<u16>) -> Attempt {
    Attempt {
        outcome,
        status,
        body: json!({"id": 7}),
        headers: Vec::new(),
        error: None,
        duration: Duration::from_millis(3),
    }
}

/// Drives an execution through `next`/`finish` with the given answers per call, as the
/// coordinator would, and returns the calls made.
struct Sim {
    exec: Exec,
    id: i64,
    calls: Vec<String>,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        Sim {
            exec: Exec::new("e1".into(), spec(yaml), json!({})),
            id: 0,
            calls: Vec::new(),
        }
    }

    fn append(&mut self, recs: Vec<Rec>) {
        for r in recs {
            self.id += 1;
            let step = r.step.map(|s| s as i64);
            self.exec.apply(self.id, r.kind, step, t(0), &r.data);
        }
    }

    /// Runs until the execution waits or is done; `answer` picks each call's result.
    fn run(&mut self, mut answer_for: impl FnMut(&str, u32) -> Attempt) -> Next {
        for _ in 0..100 {
            match self.exec.next(t(1_000_000)) {
                Next::Append(recs) => self.append(recs),
                Next::Call(plan) => {
                    let name = self.exec.spec.steps[plan.step].name.to_string();
                    let label = format!("{}:{name}", plan.phase.as_str());
                    self.calls.push(label.clone());
                    self.append(vec![Rec {
                        kind: "call.started",
                        step: Some(plan.step),
                        data: json!({"phase": plan.phase.as_str(), "attempt": plan.attempt}),
                    }]);
                    let a = answer_for(&label, plan.attempt);
                    let recs = self.exec.finish(plan, &a, t(0), |_| Duration::ZERO);
                    self.append(recs);
                }
                other => return other,
            }
        }
        panic!("no end");
    }
}

#[test]
fn a_failure_compensates_the_completed_steps_in_reverse() {
    let mut sim = Sim::new(THREE);
    // Step b is refused (a business failure): definite, not compensated itself.
    let end = sim.run(|label, _| match label {
        "action:b" => answer(Outcome::Answered, Some(409)),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(end, Next::Done);
    assert_eq!(sim.exec.state, ExecState::Compensated);
    assert_eq!(sim.calls, ["action:a", "action:b", "compensation:a"]);
}

#[test]
fn retries_follow_the_step_policy_and_in_doubt_steps_are_compensated() {
    let mut sim = Sim::new(THREE);
    // b: 1 retry; both attempts time out: in doubt, so b is compensated too, before a.
    sim.run(|label, _| match label {
        "action:b" => answer(Outcome::InDoubt, None),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(sim.exec.state, ExecState::Compensated);
    assert_eq!(
        sim.calls,
        [
            "action:a",
            "action:b",
            "action:b",
            "compensation:b",
            "compensation:a"
        ]
    );
    assert_eq!(sim.exec.steps[1].status, StepStatus::InDoubt);
}

#[test]
fn refused_after_an_attempt_in_doubt_is_still_in_doubt() {
    let mut sim = Sim::new(THREE);
    sim.run(|label, attempt| match (label, attempt) {
        ("action:b", 1) => answer(Outcome::InDoubt, None),
        ("action:b", _) => answer(Outcome::NotSent, None),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(sim.exec.steps[1].status, StepStatus::InDoubt);
    assert!(sim.calls.contains(&"compensation:b".to_owned()));
}

#[test]
fn not_sent_steps_are_not_compensated_and_4xx_is_not_retried() {
    let mut sim = Sim::new(THREE);
    sim.run(|label, _| match label {
        "action:b" => answer(Outcome::NotSent, None),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(
        sim.calls,
        ["action:a", "action:b", "action:b", "compensation:a"]
    );
    let mut sim = Sim::new(THREE);
    sim.run(|label, _| match label {
        "action:a" => answer(Outcome::Answered, Some(400)),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(sim.calls, ["action:a"], "a 400 is the service's answer");
    assert_eq!(sim.exec.state, ExecState::Compensated);
}

#[test]
fn pause_waits_and_an_operator_retry_uses_a_new_key() {
    let mut sim = Sim::new(THREE);
    let end = sim.run(|label, _| match label {
        "action:c" => answer(Outcome::Answered, Some(422)),
        _ => answer(Outcome::Ok, Some(200)),
    });
    assert_eq!(end, Next::Wait);
    assert_eq!(sim.exec.state, ExecState::Paused);
    assert_eq!(sim.exec.key(2, Phase::Action), "e1:c:action");
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "retry", "author": "ops"}),
    );
    let end = sim.run(|_, _| answer(Outcome::Ok, Some(200)));
    assert_eq!(end, Next::Done);
    assert_eq!(sim.exec.state, ExecState::Completed);
    // A deduplicating service must not answer the retry from its record of the failure.
    assert_eq!(sim.exec.key(2, Phase::Action), "e1:c:action:1");
}

#[test]
fn stuck_compensations_wait_for_skip_retry_or_abort() {
    let failing = |label: &str, _| match label {
        "action:b" => answer(Outcome::Answered, Some(409)),
        "compensation:a" => answer(Outcome::Answered, Some(500)),
        _ => answer(Outcome::Ok, Some(200)),
    };
    let mut sim = Sim::new(THREE);
    assert_eq!(sim.run(failing), Next::Wait);
    assert_eq!(sim.exec.state, ExecState::Stuck);
    assert_eq!(
        sim.calls.iter().filter(|c| *c == "compensation:a").count(),
        2,
        "stuckAfter: 2"
    );
    // Retry: two more attempts, stuck again.
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "retry", "author": "ops"}),
    );
    assert_eq!(sim.run(failing), Next::Wait);
    assert_eq!(
        sim.calls.iter().filter(|c| *c == "compensation:a").count(),
        4
    );
    // Skip: compensated without it.
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "skip", "author": "ops"}),
    );
    assert_eq!(sim.run(failing), Next::Done);
    assert_eq!(sim.exec.state, ExecState::Compensated);
    assert_eq!(sim.exec.steps[0].comp, CompStatus::Skipped);

    let mut sim = Sim::new(THREE);
    sim.run(failing);
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "abort", "author": "ops"}),
    );
    assert_eq!(sim.run(failing), Next::Done);
    assert_eq!(sim.exec.state, ExecState::Aborted);
}

#[test]
fn a_call_in_flight_at_a_crash_is_sent_again_with_its_key() {
    let mut sim = Sim::new(THREE);
    sim.append(vec![Rec {
        kind: "call.started",
        step: Some(0),
        data: json!({"phase": "action", "attempt": 1}),
    }]);
    // Rebuilt from the same log, a new coordinator re-issues that very call.
    let mut fresh = Exec::new("e1".into(), sim.exec.spec.clone(), Value::Null);
    fresh.apply(
        1,
        "call.started",
        Some(0),
        t(0),
        &json!({"phase": "action", "attempt": 1}),
    );
    assert_eq!(
        fresh.next(t(5)),
        Next::Call(CallPlan {
            step: 0,
            phase: Phase::Action,
            attempt: 1,
            resumed: true
        })
    );
}

#[test]
fn requests_that_do_not_apply_are_recorded_as_ignored() {
    let mut sim = Sim::new(THREE);
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "skip", "author": "ops"}),
    );
    match sim.exec.next(t(0)) {
        Next::Append(recs) => {
            assert_eq!(recs[0].kind, "request.ignored");
            sim.append(recs);
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.exec.requests.is_empty());
    // A cancel while running: compensate what completed.
    let end = {
        let mut n = 0;
        sim.run(|_, _| {
            n += 1;
            answer(Outcome::Ok, Some(200))
        })
    };
    assert_eq!(end, Next::Done);
    let mut sim = Sim::new(THREE);
    sim.append(vec![Rec {
        kind: "call.started",
        step: Some(0),
        data: json!({"phase": "action", "attempt": 1}),
    }]);
    let a = answer(Outcome::Ok, Some(200));
    let plan = CallPlan {
        step: 0,
        phase: Phase::Action,
        attempt: 1,
        resumed: false,
    };
    let recs = sim.exec.finish(plan, &a, t(0), |_| Duration::ZERO);
    sim.append(recs);
    sim.id += 1;
    sim.exec.apply(
        sim.id,
        "request",
        None,
        t(0),
        &json!({"op": "cancel", "author": "me"}),
    );
    sim.run(|_, _| answer(Outcome::Ok, Some(200)));
    assert_eq!(sim.exec.state, ExecState::Compensated);
    assert_eq!(sim.calls, ["compensation:a"]);
}
