//! What the API and the UI show of executions.

use std::collections::BTreeMap;

use ieum_model::Timestamp;
use ieum_model::saga::SagaSpec;
use ieum_store::saga::{ExecutionRow, LogRecord};
use serde::Serialize;
use serde_json::Value;

use crate::state::{CompStatus, Exec, ExecState, StepStatus};

/// One execution, in a list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummary {
    /// Its id.
    pub id: String,
    /// The saga.
    pub saga: String,
    /// Its state.
    pub state: String,
    /// Started.
    pub created_at: Timestamp,
    /// Last transition.
    pub updated_at: Timestamp,
    /// Who started it.
    pub author: String,
}

impl From<ExecutionRow> for ExecutionSummary {
    fn from(r: ExecutionRow) -> Self {
        ExecutionSummary {
            id: r.id,
            saga: r.saga,
            state: r.state,
            created_at: r.created_at,
            updated_at: r.updated_at,
            author: r.author,
        }
    }
}

/// One step of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// The step's name.
    pub name: String,
    /// How far its action went.
    pub status: StepStatus,
    /// Action attempts (this round).
    pub attempts: u32,
    /// Its compensation: `none`, `done`, `skipped`, `pending` while it is needed, or
    /// `abandoned` when an operator aborted the execution before it ran.
    pub compensation: String,
    /// Compensation attempts.
    pub compensation_attempts: u32,
    /// The last answer of its action (`status`, `headers`, `body`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordView {
    /// Position in the log.
    pub id: i64,
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: String,
    /// The step's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Details.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// An execution with its steps and its full log.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    /// Its id.
    pub id: String,
    /// The saga.
    pub saga: String,
    /// The saga's revision it runs.
    pub revision: i64,
    /// Its state.
    pub state: String,
    /// The request body.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The start's `Idempotency-Key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace id of its calls.
    pub trace_id: String,
    /// Started.
    pub created_at: Timestamp,
    /// Last transition.
    pub updated_at: Timestamp,
    /// Who started it.
    pub author: String,
    /// The coordinator running it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its steps.
    pub steps: Vec<StepView>,
    /// The completed steps' bodies by name (when completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Every transition, oldest first.
    pub log: Vec<RecordView>,
}

impl ExecutionView {
    /// Builds the view from the stored row and log.
    pub fn build(row: ExecutionRow, log: Vec<LogRecord>) -> ExecutionView {
        let spec: Option<SagaSpec> = serde_json::from_value(row.spec.clone()).ok();
        let mut steps = Vec::new();
        let mut names = Vec::new();
        let mut output = None;
        if let Some(spec) = spec {
            names = spec.steps.iter().map(|s| s.name.to_string()).collect();
            let mut exec = Exec::new(row.id.clone(), spec, row.input.clone());
            for r in &log {
                exec.apply(r.id, &r.kind, r.step, r.at, &r.data);
            }
            let needed = exec.needs_compensation();
            let label = match exec.state {
                ExecState::Compensating | ExecState::Stuck => "pending",
                ExecState::Aborted => "abandoned",
                _ => "none",
            };
            for (i, s) in exec.steps.iter().enumerate() {
                steps.push(StepView {
                    name: names[i].clone(),
                    status: s.status,
                    attempts: s.attempts,
                    compensation: match s.comp {
                        CompStatus::Done => "done".into(),
                        CompStatus::Skipped => "skipped".into(),
                        CompStatus::None if needed.contains(&i) => label.into(),
                        CompStatus::None => "none".into(),
                    },
                    compensation_attempts: s.comp_attempts,
                    result: s.result.clone(),
                });
            }
            if exec.state == ExecState::Completed {
                let m: serde_json::Map<String, Value> = exec
                    .steps
                    .iter()
                    .zip(&names)
                    .map(|(s, n)| {
                        (
                            n.clone(),
                            s.result.as_ref().map_or(Value::Null, |r| r["body"].clone()),
                        )
                    })
                    .collect();
                output = Some(Value::Object(m));
            }
        }
        let log = log
            .into_iter()
            .map(|r| RecordView {
                id: r.id,
                at: r.at,
                step: r
                    .step
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| names.get(i).cloned()),
                kind: r.kind,
                data: r.data,
            })
            .collect();
        ExecutionView {
            id: row.id,
            saga: row.saga,
            revision: row.revision,
            state: row.state,
            input: row.input,
            idempotency_key: row.idempotency_key,
            trace_id: row.trace_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
            author: row.author,
            owner: row.owner,
            steps,
            output,
            log,
        }
    }
}

/// Executions of one saga by state.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaCounts {
    /// The saga.
    pub saga: String,
    /// Whether a `Saga` resource defines it now (executions outlive their definition).
    pub defined: bool,
    /// Count per state; states without executions are absent.
    pub states: BTreeMap<String, i64>,
    /// All executions.
    pub total: i64,
}

impl SagaCounts {
    /// Merges the defined sagas with the stored counts.
    pub fn build(defined: Vec<String>, counts: Vec<(String, String, i64)>) -> Vec<SagaCounts> {
        let mut by: BTreeMap<String, SagaCounts> = BTreeMap::new();
        for name in defined {
            by.insert(
                name.clone(),
                SagaCounts {
                    saga: name,
                    defined: true,
                    states: BTreeMap::new(),
                    total: 0,
                },
            );
        }
        for (saga, state, n) in counts {
            let e = by.entry(saga.clone()).or_insert_with(|| SagaCounts {
                saga,
                defined: false,
                states: BTreeMap::new(),
                total: 0,
            });
            e.states.insert(state, n);
            e.total += n;
        }
        by.into_values().collect()
    }
}
