//! The saga coordinator and flows: composition of services by declarative definitions
//! (`kind: Saga`, `kind: Flow`), for plain HTTP services in any language.
//!
//! ```text
//!  POST /v1/sagas/NAME/executions ──► Coordinator::start_execution ──► saga log (create)
//!                                          │ one task per execution it owns
//!   Exec::next (pure) ─► transition ─► writer task: many executions' records, one
//!        ▲                               commit (group commit, fsync) ─► then act:
//!        └──── Exec::apply ◄─── call ◄── embedded sidecar (`ieum-coordinator`): routes,
//!                                        policies, balancing, breakers, traces ─► service
//! ```
//!
//! Layout:
//! - `state`: an execution as its log tells ([`ExecState`], steps, requests), folding
//!   records in (`apply`) and deciding what comes next (`next`, `finish`): pure, so a
//!   replay after a crash decides the same.
//! - [`coordinator`]: the [`Coordinator`] handle, the writer (group commit), execution
//!   tasks, leases (renewed; fenced appends) and the claim loop that resumes executions.
//! - `call`: calls through an embedded outbound-only sidecar, and the classification of
//!   answers: the service's own (definite), or the mesh's (not sent, or in doubt).
//! - `expr`: `${…}` templates and conditions in CEL (why CEL: `ieum_model::template`).
//! - [`view`]: executions as the API and the UI show them.
//! - [`flow`]: `Flow` — stateless orchestration, answered synchronously.
//!
//! **Invariant:** every transition is committed to the log before it is acted on; a call
//! is sent only after its `call.started` record is durable, and its result is acted on
//! only after `call.finished` is. So after a crash the coordinator knows every call that
//! may have been sent, and sends it again with the same `Idempotency-Key`.
//! **Invariant:** an execution runs in one coordinator at a time: appends are fenced by
//! the lease row, and a coordinator that lost it stops before acting.
//!
//! Every call carries `Idempotency-Key: {execution}:{step}:{action|compensation}` (with
//! `:{round}` after an operator's retry, so a participant that remembers answers by key
//! does not answer the retry with the failure it remembers), W3C `traceparent` (one trace
//! per execution) and `ieum-saga-execution`.

mod call;
pub mod coordinator;
mod expr;
pub mod flow;
mod state;
pub mod view;

pub use call::COORDINATOR_SERVICE;
pub use coordinator::{Coordinator, Error, Options, Started};
pub use flow::{FlowError, Flows};
pub use state::{ExecState, Op, Phase, StepStatus};
pub use view::{ExecutionSummary, ExecutionView, SagaCounts};
