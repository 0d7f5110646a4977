//! An execution's state, rebuilt from its log, and the decision of what to do next.
//!
//! Everything here is pure: [`Exec::apply`] folds one log record into the state, and
//! [`Exec::next`] says what the coordinator must do now (append a transition, make a call,
//! sleep, wait for an operator, or nothing: finished). The coordinator appends every
//! transition durably *before* acting on it, so replaying the log after a crash gives the
//! same state and the same next step — including re-issuing a call that was in flight,
//! with the same idempotency key.

use ieum_model::Timestamp;
use ieum_model::saga::{OnFailure, SagaSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::call::{Attempt, Outcome};

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExecState {
    /// Running actions forward.
    Running,
    /// Running compensations backwards.
    Compensating,
    /// An action failed with `onFailure: pause`: waiting for an operator.
    Paused,
    /// A compensation failed `stuckAfter` times: waiting for an operator.
    Stuck,
    /// Every action succeeded.
    Completed,
    /// Every needed compensation ran (or an operator skipped it).
    Compensated,
    /// An operator stopped it while stuck; compensations left are not run.
    Aborted,
}

impl ExecState {
    /// Every state.
    pub const ALL: [ExecState; 7] = [
        ExecState::Running,
        ExecState::Compensating,
        ExecState::Paused,
        ExecState::Stuck,
        ExecState::Completed,
        ExecState::Compensated,
        ExecState::Aborted,
    ];

    /// The lowercase name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Running => "running",
            ExecState::Compensating => "compensating",
            ExecState::Paused => "paused",
            ExecState::Stuck => "stuck",
            ExecState::Completed => "completed",
            ExecState::Compensated => "compensated",
            ExecState::Aborted => "aborted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<ExecState> {
        ExecState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ExecState::Completed | ExecState::Compensated | ExecState::Aborted
        )
    }
}

/// Which call of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl Phase {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

/// A step's action, as far as it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Attempts under way.
    Running,
    /// Succeeded.
    Completed,
    /// The service answered a failure: nothing to undo.
    Failed,
    /// Never reached the service: nothing to undo.
    NotApplied,
    /// May have taken effect: compensated like a completed step.
    InDoubt,
    /// An operator skipped it (counts as done).
    Skipped,
}

/// A step's compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum CompStatus {
    /// Not needed (yet).
    None,
    /// Ran successfully.
    Done,
    /// An operator skipped it.
    Skipped,
}

/// One step's state.
#[derive(Debug, Clone)]
pub(crate) struct StepState {
    pub(crate) status: StepStatus,
    /// Action attempts so far in this round.
    pub(crate) attempts: u32,
    /// Operator retries of the action so far (part of its idempotency key when above 0).
    pub(crate) round: u32,
    /// Operator retries of the compensation so far (likewise).
    pub(crate) comp_round: u32,
    /// When the first attempt of this round started (bounds `timeouts.request`).
    pub(crate) first_at: Option<Timestamp>,
    /// A call started and not finished (re-issued after a restart).
    pub(crate) in_flight: Option<(Phase, u32)>,
    /// Not before this time (backoff).
    pub(crate) retry_at: Option<Timestamp>,
    /// Whether any attempt of this round was in doubt.
    pub(crate) any_in_doubt: bool,
    /// The last answer of the action: `status`, `headers`, `body` for templates.
    pub(crate) result: Option<Value>,
    pub(crate) comp: CompStatus,
    /// Compensation attempts so far (all rounds).
    pub(crate) comp_attempts: u32,
    /// Failed compensation attempts since the last operator retry.
    pub(crate) comp_failures: u32,
}

impl StepState {
    fn new() -> StepState {
        StepState {
            status: StepStatus::Pending,
            attempts: 0,
            round: 0,
            comp_round: 0,
            first_at: None,
            in_flight: None,
            retry_at: None,
            any_in_doubt: false,
            result: None,
            comp: CompStatus::None,
            comp_attempts: 0,
            comp_failures: 0,
        }
    }
}

/// An operator's request, not yet acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) id: i64,
    pub(crate) op: Op,
    pub(crate) author: String,
}

/// What an operator (or a caller) asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Op {
    /// Try the paused action or stuck compensation again.
    Retry,
    /// Treat the paused action or stuck compensation as done.
    Skip,
    /// Paused: compensate. Stuck: stop, leaving the rest uncompensated.
    Abort,
    /// Stop going forward and compensate (running or paused).
    Cancel,
}

impl Op {
    /// The name in paths and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Retry => "retry",
            Op::Skip => "skip",
            Op::Abort => "abort",
            Op::Cancel => "cancel",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Op> {
        [Op::Retry, Op::Skip, Op::Abort, Op::Cancel]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// Whether it applies in `state`.
    pub fn applies_in(self, state: ExecState) -> bool {
        match self {
            Op::Retry | Op::Skip | Op::Abort => {
                matches!(state, ExecState::Paused | ExecState::Stuck)
            }
            Op::Cancel => matches!(state, ExecState::Running | ExecState::Paused),
        }
    }
}

/// A record to append (the coordinator adds the time).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rec {
    pub(crate) kind: &'static str,
    pub(crate) step: Option<usize>,
    pub(crate) data: Value,
}

/// A call to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallPlan {
    pub(crate) step: usize,
    pub(crate) phase: Phase,
    pub(crate) attempt: u32,
    /// Re-issue of a call that was in flight when the coordinator stopped.
    pub(crate) resumed: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Append these records (a transition), then ask again.
    Append(Vec<Rec>),
    /// Make this call (append `call.started` first).
    Call(CallPlan),
    /// Nothing before this time.
    Sleep(Timestamp),
    /// Nothing until an operator acts.
    Wait,
    /// Finished.
    Done,
}

/// An execution as its log tells.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    pub(crate) id: String,
    pub(crate) spec: SagaSpec,
    pub(crate) input: Value,
    pub(crate) state: ExecState,
    pub(crate) steps: Vec<StepState>,
    pub(crate) requests: Vec<Request>,
    /// The last record applied.
    pub(crate) last_id: i64,
}

fn state_rec(to: ExecState, reason: impl Into<String>) -> Rec {
    Rec {
        kind: "state",
        step: None,
        data: json!({"to": to.as_str(), "reason": reason.into()}),
    }
}

impl Exec {
    pub(crate) fn new(id: String, spec: SagaSpec, input: Value) -> Exec {
        let steps = spec.steps.iter().map(|_| StepState::new()).collect();
        Exec {
            id,
            spec,
            input,
            state: ExecState::Running,
            steps,
            requests: Vec::new(),
            last_id: 0,
        }
    }

    /// The idempotency key of a step's call.
    pub(crate) fn key(&self, step: usize, phase: Phase) -> String {
        let round = self.steps.get(step).map_or(0, |s| match phase {
            Phase::Action => s.round,
            Phase::Compensation => s.comp_round,
        });
        let name = self.spec.steps.get(step).map_or("", |s| s.name.as_str());
        if round == 0 {
            format!("{}:{name}:{}", self.id, phase.as_str())
        } else {
            format!("{}:{name}:{}:{round}", self.id, phase.as_str())
        }
    }

    /// The `steps` variable of templates.
    pub(crate) fn steps_var(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (i, s) in self.steps.iter().enumerate() {
            let Some(spec) = self.spec.steps.get(i) else {
                continue;
            };
            let mut v = s.result.clone().unwrap_or_else(|| json!({}));
            if let Value::Object(o) = &mut v {
                o.insert("state".into(), json!(s.status));
                o.insert("idempotencyKey".into(), json!(self.key(i, Phase::Action)));
            }
            m.insert(spec.name.as_str().to_owned(), v);
        }
        Value::Object(m)
    }

    /// Folds one record into the state.
    pub(crate) fn apply(
        &mut self,
        id: i64,
        kind: &str,
        step: Option<i64>,
        at: Timestamp,
        data: &Value,
    ) {
        self.last_id = self.last_id.max(id);
        let s = step
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < self.steps.len());
        let phase = match data["phase"].as_str() {
            Some("compensation") => Phase::Compensation,
            _ => Phase::Action,
        };
        let attempt = u32::try_from(data["attempt"].as_u64().unwrap_or(0)).unwrap_or(0);
        match (kind, s) {
            ("call.started", Some(i)) => {
                let st = &mut self.steps[i];
                st.in_flight = Some((phase, attempt));
                st.retry_at = None;
                if phase == Phase::Action {
                    st.status = StepStatus::Running;
                    st.attempts = st.attempts.max(attempt);
                    st.first_at.get_or_insert(at);
                } else {
                    st.comp_attempts = st.comp_attempts.max(attempt);
                }
            }
            ("call.finished", Some(i)) => {
                let st = &mut self.steps[i];
                st.in_flight = None;
                let outcome = data["attempt_outcome"].as_str().unwrap_or("");
                if outcome == "in-doubt" && phase == Phase::Action {
                    st.any_in_doubt = true;
                }
                st.retry_at = data["retryAt"].as_i64().map(Timestamp::from_millis);
                match (phase, data["verdict"].as_str().unwrap_or("")) {
                    (Phase::Action, "completed") => {
                        st.status = StepStatus::Completed;
                        st.result = Some(data["response"].clone());
                    }
                    (Phase::Action, "failed") => {
                        st.status = StepStatus::Failed;
                        st.result = Some(data["response"].clone());
                    }
                    (Phase::Action, "not-applied") => st.status = StepStatus::NotApplied,
                    (Phase::Action, "in-doubt") => st.status = StepStatus::InDoubt,
                    (Phase::Compensation, "compensated") => st.comp = CompStatus::Done,
                    (Phase::Compensation, _) => st.comp_failures += 1,
                    _ => {}
                }
            }
            ("state", _) => {
                if let Some(to) = data["to"].as_str().and_then(ExecState::parse) {
                    self.state = to;
                }
            }
            ("request", _) => {
                if let Some(op) = data["op"].as_str().and_then(Op::parse) {
                    self.requests.push(Request {
                        id,
                        op,
                        author: data["author"].as_str().unwrap_or("").to_owned(),
                    });
                }
            }
            ("request.applied" | "request.ignored", _) => {
                let request = data["request"].as_i64().unwrap_or(-1);
                let found = self.requests.iter().position(|r| r.id == request);
                let Some(pos) = found else { return };
                let r = self.requests.remove(pos);
                if kind == "request.applied" {
                    self.apply_request(r.op);
                }
            }
            _ => {}
        }
    }

    /// The effect of an operator's request on the steps (the state change is its own
    /// record).
    fn apply_request(&mut self, op: Op) {
        match (self.state, op) {
            (ExecState::Paused, Op::Retry) => {
                if let Some(i) = self.failed_step() {
                    let st = &mut self.steps[i];
                    st.status = StepStatus::Pending;
                    st.attempts = 0;
                    st.round += 1;
                    st.first_at = None;
                    st.retry_at = None;
                    st.any_in_doubt = false;
                }
            }
            (ExecState::Paused, Op::Skip) => {
                if let Some(i) = self.failed_step() {
                    self.steps[i].status = StepStatus::Skipped;
                }
            }
            (ExecState::Stuck, Op::Retry) => {
                if let Some(i) = self.next_compensation() {
                    self.steps[i].comp_failures = 0;
                    self.steps[i].comp_round += 1;
                    self.steps[i].retry_at = None;
                }
            }
            (ExecState::Stuck, Op::Skip) => {
                if let Some(i) = self.next_compensation() {
                    self.steps[i].comp = CompStatus::Skipped;
                    self.steps[i].retry_at = None;
                }
            }
            _ => {}
        }
    }

    /// The first step whose action is not done (the one running or failed).
    fn forward_step(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| !matches!(s.status, StepStatus::Completed | StepStatus::Skipped))
    }

    /// The step whose action failed (paused on it).
    fn failed_step(&self) -> Option<usize> {
        self.steps.iter().position(|s| {
            matches!(
                s.status,
                StepStatus::Failed | StepStatus::NotApplied | StepStatus::InDoubt
            )
        })
    }

    /// Every step whose compensation is still needed.
    pub(crate) fn needs_compensation(&self) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|i| {
                let st = &self.steps[*i];
                matches!(st.status, StepStatus::Completed | StepStatus::InDoubt)
                    && st.comp == CompStatus::None
                    && self.spec.steps[*i].compensation.is_some()
            })
            .collect()
    }

    /// The next compensation to run: the last step (in order) that needs one.
    pub(crate) fn next_compensation(&self) -> Option<usize> {
        (0..self.steps.len()).rev().find(|i| {
            let st = &self.steps[*i];
            matches!(st.status, StepStatus::Completed | StepStatus::InDoubt)
                && st.comp == CompStatus::None
                && self.spec.steps[*i].compensation.is_some()
        })
    }

    /// What to do now, at wall-clock time `now`.
    pub(crate) fn next(&self, now: Timestamp) -> Next {
        if self.state.is_final() {
            return Next::Done;
        }
        // A request first: it may change where the execution goes.
        if let Some(r) = self.requests.first() {
            return Next::Append(self.answer(r));
        }
        // A call in flight when the coordinator stopped is sent again, same key.
        for (i, st) in self.steps.iter().enumerate() {
            if let Some((phase, attempt)) = st.in_flight {
                return Next::Call(CallPlan {
                    step: i,
                    phase,
                    attempt,
                    resumed: true,
                });
            }
        }
        match self.state {
            ExecState::Running => match self.forward_step() {
                None => Next::Append(vec![state_rec(
                    ExecState::Completed,
                    "every step completed",
                )]),
                Some(i) => {
                    let st = &self.steps[i];
                    if matches!(
                        st.status,
                        StepStatus::Failed | StepStatus::NotApplied | StepStatus::InDoubt
                    ) {
                        // The failure's state record was lost? Decide again.
                        return Next::Append(vec![self.after_failure(i)]);
                    }
                    match st.retry_at {
                        Some(t) if t > now => Next::Sleep(t),
                        _ => Next::Call(CallPlan {
                            step: i,
                            phase: Phase::Action,
                            attempt: st.attempts + 1,
                            resumed: false,
                        }),
                    }
                }
            },
            ExecState::Compensating => match self.next_compensation() {
                None => Next::Append(vec![state_rec(
                    ExecState::Compensated,
                    "every compensation ran",
                )]),
                Some(i) => {
                    let st = &self.steps[i];
                    if st.comp_failures >= self.spec.compensation.stuck_after {
                        return Next::Append(vec![state_rec(
                            ExecState::Stuck,
                            format!(
                                "the compensation of `{}` failed {} times",
                                self.spec.steps[i].name, st.comp_failures
                            ),
                        )]);
                    }
                    match st.retry_at {
                        Some(t) if t > now => Next::Sleep(t),
                        _ => Next::Call(CallPlan {
                            step: i,
                            phase: Phase::Compensation,
                            attempt: st.comp_attempts + 1,
                            resumed: false,
                        }),
                    }
                }
            },
            ExecState::Paused | ExecState::Stuck => Next::Wait,
            ExecState::Completed | ExecState::Compensated | ExecState::Aborted => Next::Done,
        }
    }

    /// The state record after step `i`'s action finally failed.
    fn after_failure(&self, i: usize) -> Rec {
        let name = &self.spec.steps[i].name;
        match self.spec.steps[i].on_failure {
            OnFailure::Pause => state_rec(
                ExecState::Paused,
                format!("step `{name}` failed; waiting for an operator"),
            ),
            OnFailure::Compensate => {
                state_rec(ExecState::Compensating, format!("step `{name}` failed"))
            }
        }
    }

    /// The records answering an operator's request.
    fn answer(&self, r: &Request) -> Vec<Rec> {
        if !r.op.applies_in(self.state) {
            return vec![Rec {
                kind: "request.ignored",
                step: None,
                data: json!({"request": r.id, "op": r.op, "author": r.author,
                    "reason": format!("`{}` does not apply to a {} execution", r.op.as_str(), self.state.as_str())}),
            }];
        }
        let applied = Rec {
            kind: "request.applied",
            step: match self.state {
                ExecState::Paused => self.failed_step(),
                ExecState::Stuck => self.next_compensation(),
                _ => None,
            },
            data: json!({"request": r.id, "op": r.op, "author": r.author}),
        };
        let who = if r.author.is_empty() {
            String::new()
        } else {
            format!(" by {}", r.author)
        };
        let to = match (self.state, r.op) {
            (ExecState::Paused | ExecState::Stuck, Op::Retry | Op::Skip) => {
                if self.state == ExecState::Paused {
                    ExecState::Running
                } else {
                    ExecState::Compensating
                }
            }
            (ExecState::Stuck, Op::Abort) => ExecState::Aborted,
            _ => ExecState::Compensating,
        };
        vec![applied, state_rec(to, format!("{}{who}", r.op.as_str()))]
    }

    /// The records after one attempt of `plan` finished at `now`, with `retry_at` chosen by
    /// the caller's backoff when another attempt is allowed.
    pub(crate) fn finish(
        &self,
        plan: CallPlan,
        attempt: &Attempt,
        now: Timestamp,
        backoff: impl FnOnce(u32) -> std::time::Duration,
    ) -> Vec<Rec> {
        let i = plan.step;
        let spec = &self.spec.steps[i];
        let st = &self.steps[i];
        let headers: serde_json::Map<String, Value> = attempt
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let response = json!({
            "status": attempt.status,
            "headers": headers,
            "body": attempt.body,
        });
        let mut data = json!({
            "phase": plan.phase.as_str(),
            "attempt": plan.attempt,
            "attempt_outcome": attempt.outcome.as_str(),
            "result": attempt.to_json(),
            "response": response,
        });
        let mut recs = Vec::new();
        match plan.phase {
            Phase::Action => {
                let retryable = match attempt.outcome {
                    Outcome::Ok => false,
                    Outcome::Answered => {
                        attempt.status.is_some_and(|s| spec.retry.retries_status(s))
                    }
                    Outcome::NotSent | Outcome::InDoubt => true,
                    Outcome::Unsendable => false,
                };
                let wait = backoff(plan.attempt);
                let deadline = st
                    .first_at
                    .filter(|_| !spec.timeouts.request.is_zero())
                    .map(|f| f.plus(spec.timeouts.request));
                let next_at = now.plus(wait.into());
                let in_time = deadline.is_none_or(|d| next_at < d);
                let verdict = if attempt.outcome == Outcome::Ok {
                    "completed"
                } else if retryable && plan.attempt <= spec.retry.attempts && in_time {
                    data["retryAt"] = json!(next_at.as_millis());
                    "retry"
                } else {
                    match attempt.outcome {
                        Outcome::InDoubt => "in-doubt",
                        // Refused now, but an earlier attempt may have got through.
                        Outcome::NotSent if st.any_in_doubt => "in-doubt",
                        Outcome::NotSent | Outcome::Unsendable => "not-applied",
                        _ => "failed",
                    }
                };
                data["verdict"] = json!(verdict);
                recs.push(Rec {
                    kind: "call.finished",
                    step: Some(i),
                    data,
                });
                if !matches!(verdict, "completed" | "retry") {
                    recs.push(self.after_failure(i));
                }
            }
            Phase::Compensation => {
                if attempt.outcome == Outcome::Ok {
                    data["verdict"] = json!("compensated");
                } else {
                    data["verdict"] = json!("retry");
                    data["retryAt"] = json!(now.plus(backoff(plan.attempt).into()).as_millis());
                }
                recs.push(Rec {
                    kind: "call.finished",
                    step: Some(i),
                    data,
                });
            }
        }
        recs
    }
}

#[cfg(test)]
mod tests;
