//! The coordinator: one task per execution it owns, one writer task that commits the
//! transitions of all of them in batches (group commit), a lease task, and a claim loop
//! that resumes executions nobody runs (after a restart, or another replica's death).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ieum_model::Timestamp;
use ieum_model::saga::SagaSpec;
use ieum_store::saga::{Append, Appended, Created, ExecutionQuery, NewExecution, NewRecord};
use ieum_store::{SagaLog, Store, StoreError};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::call::{Attempt, Caller, OutRequest};
use crate::expr::{self, Scope};
use crate::state::{CallPlan, Exec, ExecState, Next, Op, Phase, Rec};
use crate::view::{ExecutionSummary, ExecutionView, SagaCounts};

/// Longest one attempt may take when no timeout bounds it.
const MAX_ATTEMPT: Duration = Duration::from_secs(3600);
/// Most appends committed in one transaction.
const MAX_BATCH: usize = 512;
/// How often an execution waiting for an operator looks for requests made elsewhere.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// How to run a coordinator.
#[derive(Clone)]
pub struct Options {
    /// The durable log.
    pub log: Arc<dyn SagaLog>,
    /// Where `Saga` resources are read.
    pub store: Arc<dyn Store>,
    /// The server's API address, for the embedded sidecar's push client.
    pub server: String,
    /// Bearer token for that server (off loopback).
    pub token: Option<String>,
    /// How long a lease on an execution holds without renewal.
    pub lease: Duration,
    /// How often executions nobody runs are looked for.
    pub claim_every: Duration,
    /// Take every unfinished execution at start, whoever held it: right for a single
    /// server (SQLite) restarting; replicas on PostgreSQL wait for leases to expire.
    pub take_over_at_start: bool,
    /// The coordinator's mesh identity (`system:coordinator`), issued by the server's CA:
    /// its calls to services are mTLS like a sidecar's. `None` under `--dev`.
    pub mesh: Option<ieum_proxy::MeshConfig>,
    /// For an `https://` server: the TLS configuration that verifies it (the server hands
    /// over its own CA). Required for `https://`.
    pub server_tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("server", &self.server)
            .field("lease", &self.lease)
            .field("claim_every", &self.claim_every)
            .field("take_over_at_start", &self.take_over_at_start)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Defaults: 15 s leases, a claim every 2 s, take over at start on SQLite.
    pub fn new(log: Arc<dyn SagaLog>, store: Arc<dyn Store>, server: String) -> Options {
        let single = log.backend() == "sqlite";
        Options {
            log,
            store,
            server,
            token: None,
            lease: Duration::from_secs(15),
            claim_every: Duration::from_secs(2),
            take_over_at_start: single,
            mesh: None,
            server_tls: None,
        }
    }
}

/// Why a coordinator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such saga or execution.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the execution's state.
    #[error("{0}")]
    Conflict(String),
    /// The stored saga cannot be run.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The coordinator is stopping.
    #[error("the saga coordinator is stopping")]
    Stopping,
}

/// The result of a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The execution's id.
    pub id: String,
    /// True when an execution with the same idempotency key already existed.
    pub existing: bool,
}

struct WriteReq {
    batch: Append,
    done: oneshot::Sender<Result<Appended, String>>,
}

struct Running {
    notify: Arc<Notify>,
    lost: Arc<AtomicBool>,
    /// Set with a request recorded here: the task reads the log before its next step.
    poke: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

struct Inner {
    log: Arc<dyn SagaLog>,
    store: Arc<dyn Store>,
    owner: String,
    lease: Duration,
    caller: Caller,
    writer: mpsc::Sender<WriteReq>,
    tasks: Mutex<HashMap<String, Running>>,
    changes: broadcast::Sender<(String, ExecState)>,
    stop: CancellationToken,
    /// Whether other replicas may append requests (PostgreSQL): running executions look
    /// for them now and then.
    shared_log: bool,
}

/// A running coordinator; cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("owner", &self.inner.owner)
            .field("caller", &self.inner.caller)
            .finish_non_exhaustive()
    }
}

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A new execution id: the time in milliseconds (so ids sort by start) and 48 random bits.
fn new_id() -> String {
    let ms = u64::try_from(now().as_millis()).unwrap_or(0);
    format!("{ms:011x}{}", hex(6))
}

fn until(t: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(t.as_millis() - now().as_millis()).unwrap_or(0))
}

/// Full-jitter exponential backoff.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max).max(Duration::from_millis(1));
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::random_range(1..=ms))
}

impl Coordinator {
    /// Starts the embedded sidecar, the writer, the lease and claim tasks, and resumes
    /// unfinished executions.
    pub async fn start(options: Options) -> std::io::Result<Coordinator> {
        let caller = Caller::start(
            &options.server,
            options.token.clone(),
            options.server_tls.clone(),
            options.mesh.clone(),
        )
        .await?;
        let (writer, rx) = mpsc::channel(4096);
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            shared_log: options.log.backend() == "postgres",
            log: options.log.clone(),
            store: options.store.clone(),
            owner: format!("coordinator-{}", hex(8)),
            lease: options.lease,
            caller,
            writer,
            tasks: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            stop: stop.clone(),
        });
        tokio::spawn(write_loop(options.log.clone(), rx, stop.clone()));
        let coordinator = Coordinator { inner };
        tokio::spawn(coordinator.clone().lease_loop(options.lease / 3));
        tokio::spawn(
            coordinator
                .clone()
                .claim_loop(options.claim_every, options.take_over_at_start),
        );
        tracing::info!(owner = %coordinator.inner.owner, outbound = %coordinator.inner.caller.outbound_addr(), "saga coordinator started");
        Ok(coordinator)
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn caller(&self) -> &Caller {
        &self.inner.caller
    }

    /// This coordinator's name in lease rows.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The embedded sidecar's outbound listener.
    pub fn outbound_addr(&self) -> std::net::SocketAddr {
        self.inner.caller.outbound_addr()
    }

    /// Stops every task at once, as a crash would (all state is in the log already), and
    /// gives up the leases so another replica can resume without waiting.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let tasks: Vec<(String, Running)> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (id, t) in tasks {
            t.abort.abort();
            let _ = self.inner.log.release(&self.inner.owner, &id).await;
        }
        self.inner.caller.shutdown();
    }

    /// Stops every task and the sidecar without touching storage, as `kill -9` would.
    pub fn abort(&self) {
        self.inner.stop.cancel();
        for (_, t) in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            t.abort.abort();
        }
        self.inner.caller.shutdown();
    }

    /// Starts an execution of `saga` with `input`; a second start with the same
    /// `idempotency_key` returns the first one's id.
    pub async fn start_execution(
        &self,
        saga: &str,
        input: Value,
        idempotency_key: Option<String>,
        author: &str,
    ) -> Result<Started, Error> {
        if self.inner.stop.is_cancelled() {
            return Err(Error::Stopping);
        }
        let stored = self
            .inner
            .store
            .resource("Saga", saga)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!("Saga/{saga} does not exist: apply it first"))
            })?;
        let spec: SagaSpec = serde_json::from_value(stored.spec.clone())
            .map_err(|e| Error::Invalid(format!("Saga/{saga} cannot be read: {e}")))?;
        let id = new_id();
        let at = now();
        let e = NewExecution {
            id: id.clone(),
            saga: saga.to_owned(),
            revision: stored.revision,
            idempotency_key,
            state: ExecState::Running.as_str().into(),
            input: input.clone(),
            spec: stored.spec,
            trace_id: hex(16),
            at,
            author: author.to_owned(),
            owner: Some(self.inner.owner.clone()),
            lease_until: at.plus(self.inner.lease.into()),
        };
        let first = NewRecord {
            at,
            kind: "execution.started".into(),
            step: None,
            data: json!({"saga": saga, "revision": stored.revision, "author": author}),
        };
        match self.inner.log.create(&e, &[first]).await? {
            Created::Existing(id) => Ok(Started { id, existing: true }),
            Created::New => {
                let _ = spec;
                self.spawn(id.clone());
                Ok(Started {
                    id,
                    existing: false,
                })
            }
        }
    }

    /// An execution with its steps and full log.
    pub async fn execution(&self, id: &str) -> Result<ExecutionView, Error> {
        let row = self
            .inner
            .log
            .execution(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no saga execution `{id}`")))?;
        let log = self.inner.log.log(id, 0).await?;
        Ok(ExecutionView::build(row, log))
    }

    /// Executions, newest first.
    pub async fn list(&self, q: &ExecutionQuery) -> Result<Vec<ExecutionSummary>, Error> {
        Ok(self
            .inner
            .log
            .executions(q)
            .await?
            .into_iter()
            .map(ExecutionSummary::from)
            .collect())
    }

    /// Counts of executions by saga and state, with every defined saga listed.
    pub async fn counts(&self) -> Result<Vec<SagaCounts>, Error> {
        let defined = self.inner.store.resources("Saga").await?;
        let counts = self.inner.log.counts().await?;
        Ok(SagaCounts::build(
            defined.iter().map(|r| r.name.clone()).collect(),
            counts,
        ))
    }

    /// Records an operator's (or caller's) request; the execution acts on it next.
    pub async fn request(&self, id: &str, op: Op, author: &str) -> Result<(), Error> {
        let row = self
            .inner
            .log
            .execution(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no saga execution `{id}`")))?;
        let state = ExecState::parse(&row.state).unwrap_or(ExecState::Running);
        if !op.applies_in(state) {
            let what = match op {
                Op::Cancel => "running or paused",
                _ => "paused or stuck",
            };
            return Err(Error::Conflict(format!(
                "`{}` applies to a {what} execution; `{id}` is {}",
                op.as_str(),
                state.as_str()
            )));
        }
        let batch = Append {
            execution: id.to_owned(),
            records: vec![NewRecord {
                at: now(),
                kind: "request".into(),
                step: None,
                data: json!({"op": op.as_str(), "author": author}),
            }],
            state: None,
            owner: None,
        };
        self.inner.append(batch).await.map_err(Error::Conflict)?;
        let running = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|r| (r.notify.clone(), r.poke.clone()));
        if let Some((n, poke)) = running {
            poke.store(true, Ordering::Release);
            n.notify_one();
        }
        Ok(())
    }

    /// Waits until the execution is finished, for at most `timeout`; `None` when it is not
    /// finished by then.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Option<ExecutionView>, Error> {
        let mut rx = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self
                .inner
                .log
                .execution(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no saga execution `{id}`")))?;
            if ExecState::parse(&row.state).is_some_and(ExecState::is_final) {
                return self.execution(id).await.map(Some);
            }
            // Wait for this execution to finish here, or poll (another replica may run it).
            let wait = async {
                loop {
                    match rx.recv().await {
                        Ok((eid, s)) if eid == id && s.is_final() => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            };
            let poll = tokio::time::Instant::now() + Duration::from_secs(1);
            tokio::select! {
                () = wait => {}
                () = tokio::time::sleep_until(poll.min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let row = self.inner.log.execution(id).await?;
                if row.is_some_and(|r| ExecState::parse(&r.state).is_some_and(ExecState::is_final))
                {
                    return self.execution(id).await.map(Some);
                }
                return Ok(None);
            }
        }
    }

    /// Runs `id` here unless it already runs.
    fn spawn(&self, id: String) {
        if self.inner.stop.is_cancelled() {
            return;
        }
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.contains_key(&id) {
            return;
        }
        let notify = Arc::new(Notify::new());
        let lost = Arc::new(AtomicBool::new(false));
        let poke = Arc::new(AtomicBool::new(false));
        let inner = self.inner.clone();
        let flags = Flags {
            notify: notify.clone(),
            lost: lost.clone(),
            poke: poke.clone(),
        };
        let task = tokio::spawn(run(inner, id.clone(), flags));
        tasks.insert(
            id,
            Running {
                notify,
                lost,
                poke,
                abort: task.abort_handle(),
            },
        );
    }

    async fn lease_loop(self, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.stop.cancelled() => return,
            }
            let held = match self
                .inner
                .log
                .renew(&self.inner.owner, now().plus(self.inner.lease.into()))
                .await
            {
                Ok(ids) => ids.into_iter().collect::<HashSet<_>>(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew saga leases");
                    continue;
                }
            };
            let tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for (id, t) in tasks.iter() {
                if !held.contains(id) {
                    t.lost.store(true, Ordering::Release);
                    t.notify.notify_one();
                }
            }
        }
    }

    async fn claim_loop(self, every: Duration, mut force: bool) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.inner.stop.cancelled() => return,
            }
            let t = now();
            match self
                .inner
                .log
                .claim(&self.inner.owner, t.plus(self.inner.lease.into()), t, force)
                .await
            {
                Ok(ids) => {
                    if force && !ids.is_empty() {
                        tracing::info!(count = ids.len(), "resuming unfinished saga executions");
                    }
                    force = false;
                    for id in ids {
                        self.spawn(id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot claim saga executions"),
            }
        }
    }
}

impl Inner {
    async fn append(&self, batch: Append) -> Result<Appended, String> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(WriteReq { batch, done })
            .await
            .map_err(|_| "the saga log writer stopped".to_owned())?;
        rx.await
            .map_err(|_| "the saga log writer stopped".to_owned())?
    }
}

/// Commits appends in batches: whatever is queued when a commit ends goes in the next.
async fn write_loop(
    log: Arc<dyn SagaLog>,
    mut rx: mpsc::Receiver<WriteReq>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r { Some(r) => r, None => return },
            () = stop.cancelled() => return,
        };
        let mut reqs = vec![first];
        while reqs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => reqs.push(r),
                Err(_) => break,
            }
        }
        let batches: Vec<Append> = reqs.iter().map(|r| r.batch.clone()).collect();
        match log.append(&batches).await {
            Ok(results) => {
                for (r, a) in reqs.into_iter().zip(results) {
                    let _ = r.done.send(Ok(a));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot append to the saga log");
                for r in reqs {
                    let _ = r.done.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Why an execution task stopped early.
enum Stop {
    /// Another coordinator holds the execution now.
    Lost,
    /// The coordinator is stopping.
    Stopping,
}

/// What wakes or stops an execution task.
struct Flags {
    notify: Arc<Notify>,
    lost: Arc<AtomicBool>,
    poke: Arc<AtomicBool>,
}

/// Runs one execution until it finishes, waits for an operator, or is lost.
async fn run(inner: Arc<Inner>, id: String, flags: Flags) {
    let result = drive(&inner, &id, &flags).await;
    inner
        .tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    match result {
        Ok(()) => {
            let _ = inner.log.release(&inner.owner, &id).await;
        }
        Err(Stop::Lost) => tracing::info!(execution = %id, "saga execution taken over elsewhere"),
        Err(Stop::Stopping) => {}
    }
}

struct Task<'a> {
    inner: &'a Inner,
    exec: Exec,
    trace_id: String,
    applied: HashSet<i64>,
}

impl Task<'_> {
    fn apply_stored(
        &mut self,
        id: i64,
        kind: &str,
        step: Option<i64>,
        at: Timestamp,
        data: &Value,
    ) {
        if self.applied.insert(id) {
            self.exec.apply(id, kind, step, at, data);
        }
    }

    /// Reads records appended by others (operators' requests).
    async fn poll(&mut self) -> Result<(), StoreError> {
        for r in self.inner.log.log(&self.exec.id, 0).await? {
            if !self.applied.contains(&r.id) && r.kind == "request" {
                self.apply_stored(r.id, &r.kind, r.step, r.at, &r.data);
            }
        }
        Ok(())
    }

    /// Appends records durably, then applies them; retries while storage is down.
    async fn commit(&mut self, recs: Vec<Rec>) -> Result<(), Stop> {
        let at = now();
        let state = recs
            .iter()
            .rev()
            .find(|r| r.kind == "state")
            .and_then(|r| r.data["to"].as_str())
            .map(str::to_owned);
        let records: Vec<NewRecord> = recs
            .iter()
            .map(|r| NewRecord {
                at,
                kind: r.kind.into(),
                step: r.step.and_then(|s| i64::try_from(s).ok()),
                data: r.data.clone(),
            })
            .collect();
        let batch = Append {
            execution: self.exec.id.clone(),
            records: records.clone(),
            state: state.clone(),
            owner: Some(self.inner.owner.clone()),
        };
        loop {
            if self.inner.stop.is_cancelled() {
                return Err(Stop::Stopping);
            }
            match self.inner.append(batch.clone()).await {
                Ok(Appended::Stored(ids)) => {
                    for (id, r) in ids.into_iter().zip(&records) {
                        self.apply_stored(id, &r.kind, r.step, r.at, &r.data);
                    }
                    if let Some(s) = state.as_deref().and_then(ExecState::parse) {
                        let _ = self.inner.changes.send((self.exec.id.clone(), s));
                    }
                    return Ok(());
                }
                Ok(Appended::Fenced) => return Err(Stop::Lost),
                Err(e) => {
                    tracing::warn!(execution = %self.exec.id, error = %e, "cannot log a saga transition; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.inner.stop.cancelled() => return Err(Stop::Stopping),
                    }
                }
            }
        }
    }

    /// The request of a call, rendered from the step's templates.
    fn render(&self, plan: CallPlan) -> Result<OutRequest, String> {
        let step = &self.exec.spec.steps[plan.step];
        let call = match plan.phase {
            Phase::Action => &step.action,
            Phase::Compensation => step
                .compensation
                .as_ref()
                .ok_or_else(|| "the step has no compensation".to_owned())?,
        };
        let scope = Scope::new(&self.exec.input, self.exec.steps_var())
            .with("execution", json!({"id": self.exec.id}));
        let path = expr::render_text(&call.path, &scope)?;
        let mut headers = Vec::new();
        for (k, v) in &call.headers {
            headers.push((k.clone(), expr::render_text(v, &scope)?));
        }
        headers.push((
            "idempotency-key".into(),
            self.exec.key(plan.step, plan.phase),
        ));
        headers.push((
            "traceparent".into(),
            format!("00-{}-{}-01", self.trace_id, hex(8)),
        ));
        headers.push(("ieum-saga-execution".into(), self.exec.id.clone()));
        let body = call
            .body
            .as_ref()
            .map(|b| expr::render_json(b, &scope))
            .transpose()?;
        Ok(OutRequest {
            service: call.service.as_str().to_owned(),
            method: call.method.clone(),
            path,
            headers,
            body,
        })
    }

    fn attempt_timeout(&self, plan: CallPlan) -> Duration {
        let step = &self.exec.spec.steps[plan.step];
        let t = step.timeouts;
        let per = (!t.backend_request.is_zero()).then(|| t.backend_request.get());
        match plan.phase {
            Phase::Compensation => per
                .or((!t.request.is_zero()).then(|| t.request.get()))
                .unwrap_or(MAX_ATTEMPT),
            // A call cut short by a crash gets a whole attempt again: the outage was not
            // the service's doing.
            Phase::Action if plan.resumed => per
                .or((!t.request.is_zero()).then(|| t.request.get()))
                .unwrap_or(MAX_ATTEMPT),
            Phase::Action => {
                let left = self.exec.steps[plan.step]
                    .first_at
                    .filter(|_| !t.request.is_zero())
                    .map(|f| until(f.plus(t.request)).max(Duration::from_millis(1)));
                match (per, left) {
                    (Some(p), Some(l)) => p.min(l),
                    (Some(p), None) => p,
                    (None, Some(l)) => l,
                    (None, None) => MAX_ATTEMPT,
                }
            }
        }
    }

    async fn call(&mut self, plan: CallPlan) -> Result<(), Stop> {
        let rendered = self.render(plan);
        let key = self.exec.key(plan.step, plan.phase);
        let started = Rec {
            kind: "call.started",
            step: Some(plan.step),
            data: json!({
                "phase": plan.phase.as_str(),
                "attempt": plan.attempt,
                "resumed": plan.resumed,
                "idempotencyKey": key,
                "request": rendered.as_ref().map(OutRequest::to_json).unwrap_or(Value::Null),
            }),
        };
        self.commit(vec![started]).await?;
        let attempt = match &rendered {
            Ok(req) => {
                let timeout = self.attempt_timeout(plan);
                tokio::select! {
                    a = self.inner.caller.send(req, timeout) => a,
                    () = self.inner.stop.cancelled() => return Err(Stop::Stopping),
                }
            }
            Err(e) => Attempt::unsendable(e.clone()),
        };
        let spec = &self.exec.spec;
        let step = &spec.steps[plan.step];
        let (base, max) = match plan.phase {
            Phase::Action => (step.retry.backoff.get(), step.retry.max_backoff.get()),
            Phase::Compensation => (
                spec.compensation.retry.backoff.get(),
                spec.compensation.retry.max_backoff.get(),
            ),
        };
        let recs = self
            .exec
            .finish(plan, &attempt, now(), |n| backoff(base, max, n));
        self.commit(recs).await
    }
}

async fn drive(inner: &Inner, id: &str, flags: &Flags) -> Result<(), Stop> {
    let (notify, lost) = (&flags.notify, &flags.lost);
    let load = async {
        let row = inner.log.execution(id).await?;
        let log = inner.log.log(id, 0).await?;
        Ok::<_, StoreError>((row, log))
    };
    let (row, log) = match load.await {
        Ok((Some(row), log)) => (row, log),
        Ok((None, _)) => return Ok(()),
        Err(e) => {
            tracing::warn!(execution = %id, error = %e, "cannot load a saga execution; the claim loop will retry");
            return Err(Stop::Stopping);
        }
    };
    let spec: SagaSpec = match serde_json::from_value(row.spec.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(execution = %id, error = %e, "a saga execution's spec is unreadable");
            return Err(Stop::Stopping);
        }
    };
    let mut task = Task {
        inner,
        exec: Exec::new(id.to_owned(), spec, row.input.clone()),
        trace_id: row.trace_id.clone(),
        applied: HashSet::new(),
    };
    for r in &log {
        task.apply_stored(r.id, &r.kind, r.step, r.at, &r.data);
    }
    let mut last_poll = tokio::time::Instant::now();
    loop {
        if lost.load(Ordering::Acquire) {
            return Err(Stop::Lost);
        }
        let poked = flags.poke.swap(false, Ordering::AcqRel);
        if poked || (inner.shared_log && last_poll.elapsed() >= WAIT_POLL) {
            last_poll = tokio::time::Instant::now();
            let _ = task.poll().await;
        }
        match task.exec.next(now()) {
            Next::Done => return Ok(()),
            Next::Append(recs) => task.commit(recs).await?,
            Next::Call(plan) => task.call(plan).await?,
            Next::Sleep(t) => {
                tokio::select! {
                    () = tokio::time::sleep(until(t)) => {}
                    () = notify.notified() => { let _ = task.poll().await; }
                    () = inner.stop.cancelled() => return Err(Stop::Stopping),
                }
            }
            Next::Wait => {
                tokio::select! {
                    () = tokio::time::sleep(WAIT_POLL) => {}
                    () = notify.notified() => {}
                    () = inner.stop.cancelled() => return Err(Stop::Stopping),
                }
                let _ = task.poll().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_the_cap() {
        for attempt in 1..10 {
            let d = backoff(Duration::from_millis(100), Duration::from_secs(1), attempt);
            let cap = (100u64 << (attempt - 1)).min(1000);
            assert!(d.as_millis() as u64 <= cap && d.as_millis() >= 1, "{d:?}");
        }
    }

    #[test]
    fn ids_sort_by_start_time() {
        let a = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_id();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), 23);
    }
}
