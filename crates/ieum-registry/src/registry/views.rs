//! Read-only views for people (the web UI): the current state of every circuit breaker
//! sidecars reported, golden signals summed per service, per call edge and per time
//! bucket, and events per topic with who publishes and who consumes.
//!
//! Nothing here changes the registry's behaviour: breaker states are a memo of the
//! transitions `report_telemetry` already turns into events, and the signal and topic
//! summaries read the samples it keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ieum_model::telemetry::{BreakerChange, SignalSample, Signals};
use ieum_model::{Duration, Timestamp};

use super::Registry;

/// Memos kept for views, beside the registry's state (own locks, never held together with
/// the state lock).
#[derive(Default)]
pub(crate) struct Views {
    /// The latest transition per caller instance, destination and endpoint.
    breakers: Mutex<BTreeMap<BreakerKey, BreakerState>>,
}

/// (caller service, caller instance, destination, endpoint)
type BreakerKey = (String, String, String, Option<String>);

/// The last known state of one caller instance's breaker toward a destination (or one of
/// its endpoints), as its sidecar reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerState {
    /// The calling service.
    pub caller: String,
    /// The calling instance (each sidecar keeps its own breakers).
    pub instance: String,
    /// The service called.
    pub destination: String,
    /// The endpoint, for per-endpoint breakers.
    pub endpoint: Option<String>,
    /// `allowed` (closed), `blocked` (open) or `probing` (half-open).
    pub state: String,
    /// Why it took that state.
    pub reason: String,
    /// When the server received the transition.
    pub since: Timestamp,
}

impl BreakerState {
    /// Whether calls are refused (the breaker is open).
    pub fn is_open(&self) -> bool {
        self.state == "blocked"
    }
}

impl Views {
    /// Remembers the breaker transitions of one report (the hook in `report_telemetry`).
    pub(crate) fn note_breakers(
        &self,
        service: &str,
        instance: &str,
        now: Timestamp,
        changes: &[BreakerChange],
    ) {
        if changes.is_empty() {
            return;
        }
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        for b in changes {
            let key = (
                service.to_owned(),
                instance.to_owned(),
                b.destination.clone(),
                b.endpoint.clone(),
            );
            map.insert(
                key,
                BreakerState {
                    caller: service.to_owned(),
                    instance: instance.to_owned(),
                    destination: b.destination.clone(),
                    endpoint: b.endpoint.clone(),
                    state: b.to.clone(),
                    reason: b.reason.clone(),
                    since: now,
                },
            );
        }
    }
}

/// Golden signals of some traffic over a span of time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Golden {
    /// Requests counted.
    pub requests: u64,
    /// Requests per second: for one bucket, requests over its length; for [`Traffic`], the
    /// sum over reporting lines (instance, direction, destination, route) of each line's
    /// requests over the windows it reported, so a minute holding five or seven 10 s
    /// reports reads the same.
    pub requests_per_second: f64,
    /// Share of successful responses (0–1), weighted by requests.
    pub success_rate: Option<f64>,
    /// Median latency in milliseconds, the requests-weighted mean of the reported medians
    /// (percentiles do not add up; this is an estimate).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds: the worst reported (a conservative figure
    /// for comparing with an SLA).
    pub p99_ms: Option<f64>,
}

/// Sums samples into a [`Golden`].
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    requests: u64,
    rated: f64,
    ok: f64,
    p50_weight: f64,
    p50_sum: f64,
    p99: Option<f64>,
}

impl Acc {
    fn add(&mut self, s: &Signals) {
        self.requests += s.requests;
        let n = s.requests as f64;
        if let Some(r) = s.success_rate {
            self.rated += n;
            self.ok += n * r;
        }
        if let Some(p) = s.p50_ms {
            self.p50_weight += n;
            self.p50_sum += n * p;
        }
        if let Some(p) = s.p99_ms {
            self.p99 = Some(self.p99.map_or(p, |q| q.max(p)));
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.requests += o.requests;
        self.rated += o.rated;
        self.ok += o.ok;
        self.p50_weight += o.p50_weight;
        self.p50_sum += o.p50_sum;
        if let Some(p) = o.p99 {
            self.p99 = Some(self.p99.map_or(p, |q| q.max(p)));
        }
    }

    fn golden(&self, span: Duration) -> Golden {
        let secs = span.get().as_secs_f64().max(1.0);
        Golden {
            requests: self.requests,
            requests_per_second: self.requests as f64 / secs,
            success_rate: (self.rated > 0.0).then(|| self.ok / self.rated),
            p50_ms: (self.p50_weight > 0.0).then(|| self.p50_sum / self.p50_weight),
            p99_ms: self.p99,
        }
    }
}

/// Golden signals of every service and every call edge over one span of time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// What each service served, from its own sidecars (`inbound` lines); for a service
    /// without a sidecar, from its callers' `outbound` lines.
    pub served: BTreeMap<String, Golden>,
    /// Calls from one service (first) to another (second), from the caller's sidecars.
    pub edges: BTreeMap<(String, String), Golden>,
}

/// Golden signals of one service over one bucket of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the bucket.
    pub start: Timestamp,
    /// Its signals; `requests == 0` when nothing was reported.
    pub signals: Golden,
}

impl Registry {
    /// The current state of every circuit breaker reported since the server started, by
    /// caller, destination and endpoint. Breakers of instances that are gone are dropped.
    pub fn breakers(&self) -> Vec<BreakerState> {
        let list: Vec<BreakerState> = {
            let map = self
                .core
                .views
                .breakers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        if list.is_empty() {
            return list;
        }
        let gone: BTreeSet<(String, String)> = {
            let st = self.core.lock();
            list.iter()
                .filter(|b| {
                    st.services
                        .get(&b.caller)
                        .is_none_or(|s| !s.instances.contains_key(&b.instance))
                })
                .map(|b| (b.caller.clone(), b.instance.clone()))
                .collect()
        };
        if gone.is_empty() {
            return list;
        }
        let mut map = self
            .core
            .views
            .breakers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.retain(|(caller, instance, _, _), _| {
            !gone.contains(&(caller.clone(), instance.clone()))
        });
        list.into_iter()
            .filter(|b| !gone.contains(&(b.caller.clone(), b.instance.clone())))
            .collect()
    }

    /// Golden signals of every service and call edge from the samples received since
    /// `since`.
    pub fn traffic(&self, since: Timestamp) -> Traffic {
        let span = self.now().since(since);
        let mut inbound: BTreeMap<String, Acc> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), Acc> = BTreeMap::new();
        // Requests and seconds reported per line: (instance, inbound?, destination, route).
        type Line<'a> = (&'a str, bool, &'a str, &'a str);
        let mut inbound_rates: BTreeMap<String, f64> = BTreeMap::new();
        let mut edge_rates: BTreeMap<(String, String), f64> = BTreeMap::new();
        {
            let signals = self.core.signals.lock().unwrap_or_else(|p| p.into_inner());
            for (service, samples) in signals.iter() {
                let mut lines: BTreeMap<Line<'_>, (u64, f64)> = BTreeMap::new();
                // Newest last: walk back until the span is covered.
                for s in samples.iter().rev().take_while(|s| s.at >= since) {
                    let sig = &s.signals;
                    let is_inbound = sig.direction == "inbound";
                    let line = lines
                        .entry((&s.instance, is_inbound, &sig.destination, &sig.route))
                        .or_default();
                    line.0 += sig.requests;
                    line.1 += s.window.get().as_secs_f64();
                    if is_inbound {
                        inbound.entry(service.clone()).or_default().add(sig);
                    } else {
                        edges
                            .entry((service.clone(), sig.destination.clone()))
                            .or_default()
                            .add(sig);
                    }
                }
                for ((_, is_inbound, destination, _), (requests, secs)) in lines {
                    let rate = requests as f64 / secs.max(1.0);
                    if is_inbound {
                        *inbound_rates.entry(service.clone()).or_default() += rate;
                    } else {
                        *edge_rates
                            .entry((service.clone(), destination.to_owned()))
                            .or_default() += rate;
                    }
                }
            }
        }
        let rated = |mut g: Golden, rate: Option<&f64>| {
            g.requests_per_second = rate.copied().unwrap_or_default();
            g
        };
        let mut served_by_callers: BTreeMap<&str, (Acc, f64)> = BTreeMap::new();
        for (key, acc) in &edges {
            if !inbound.contains_key(&key.1) {
                let entry = served_by_callers.entry(&key.1).or_default();
                entry.0.merge(acc);
                entry.1 += edge_rates.get(key).copied().unwrap_or_default();
            }
        }
        let mut served: BTreeMap<String, Golden> = inbound
            .iter()
            .map(|(k, a)| (k.clone(), rated(a.golden(span), inbound_rates.get(k))))
            .collect();
        served.extend(
            served_by_callers
                .into_iter()
                .map(|(k, (a, rate))| (k.to_owned(), rated(a.golden(span), Some(&rate)))),
        );
        Traffic {
            served,
            edges: edges
                .into_iter()
                .map(|(k, a)| {
                    let g = rated(a.golden(span), edge_rates.get(&k));
                    (k, g)
                })
                .collect(),
        }
    }

    /// What `service` served since `since`, in buckets of `step`, oldest first (for an SLA
    /// over time). From its own sidecars' `inbound` lines when it has any, else from its
    /// callers' `outbound` lines.
    pub fn signal_buckets(&self, service: &str, since: Timestamp, step: Duration) -> Vec<Bucket> {
        let now = self.now();
        let step_ms = i64::try_from(step.as_millis_u64())
            .unwrap_or(i64::MAX)
            .max(1);
        let n = usize::try_from((now.as_millis() - since.as_millis()).max(0) / step_ms + 1)
            .unwrap_or(1)
            .min(10_000);
        let mut own = vec![Acc::default(); n];
        let mut callers = vec![Acc::default(); n];
        let mut has_own = false;
        let slot = |s: &SignalSample| {
            usize::try_from((s.at.as_millis() - since.as_millis()) / step_ms)
                .ok()
                .filter(|i| *i < n)
        };
        {
            let signals = self.core.signals.lock().unwrap_or_else(|p| p.into_inner());
            for (reporter, samples) in signals.iter() {
                for s in samples.iter().rev().take_while(|s| s.at >= since) {
                    let sig = &s.signals;
                    let Some(i) = slot(s) else { continue };
                    if reporter == service && sig.direction == "inbound" {
                        has_own = true;
                        own[i].add(sig);
                    } else if sig.direction == "outbound" && sig.destination == service {
                        callers[i].add(sig);
                    }
                }
            }
        }
        let accs = if has_own { own } else { callers };
        accs.iter()
            .enumerate()
            .map(|(i, a)| Bucket {
                start: Timestamp::from_millis(since.as_millis() + step_ms * i as i64),
                signals: a.golden(step),
            })
            .collect()
    }
}

impl Registry {
    /// The SLA of every service that declares one, by name (one pass, for lists).
    pub fn slas(&self) -> BTreeMap<String, ieum_model::service::Sla> {
        let st = self.core.lock();
        st.services
            .iter()
            .filter_map(|(name, s)| s.spec.sla.clone().map(|sla| (name.clone(), sla)))
            .collect()
    }
}

/// One service publishing to a topic, summed over its instances.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Publisher {
    /// The publishing service.
    pub service: String,
    /// Publishes the broker acknowledged.
    pub published: u64,
    /// Acknowledged publishes per second (each instance's count over the windows it
    /// reported, summed, as for [`Golden::requests_per_second`]).
    pub per_second: f64,
    /// Publishes that failed.
    pub failed: u64,
}

/// One service consuming a topic, summed over its instances.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumer {
    /// The consuming service.
    pub service: String,
    /// Deliveries the app took.
    pub delivered: u64,
    /// Deliveries taken per second (summed over instances like [`Publisher::per_second`]).
    pub per_second: f64,
    /// Deliveries given back for another try.
    pub retried: u64,
    /// Deliveries discarded.
    pub dropped: u64,
    /// Deliveries sent to the dead-letter topic.
    pub dead_lettered: u64,
}

/// Who publishes to and who consumes one topic of one `PubSub`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicView {
    /// The `PubSub` (or `Binding`).
    pub pubsub: String,
    /// The topic.
    pub topic: String,
    /// Publishing services, by name.
    pub publishers: Vec<Publisher>,
    /// Consuming services, by name.
    pub consumers: Vec<Consumer>,
}

impl TopicView {
    /// Failed publishes, retries, drops and dead letters together.
    pub fn failures(&self) -> u64 {
        self.publishers.iter().map(|p| p.failed).sum::<u64>()
            + self
                .consumers
                .iter()
                .map(|c| c.retried + c.dropped + c.dead_lettered)
                .sum::<u64>()
    }
}

impl Registry {
    /// Every topic with events reported since `since`, by `PubSub` and topic, with its
    /// publishers and consumers.
    pub fn topics(&self, since: Timestamp) -> Vec<TopicView> {
        // (pubsub, topic) → (service → publisher, service → consumer)
        type Sides = (BTreeMap<String, Publisher>, BTreeMap<String, Consumer>);
        let mut out: BTreeMap<(String, String), Sides> = BTreeMap::new();
        {
            let topics = self.core.topics.lock().unwrap_or_else(|p| p.into_inner());
            for (service, samples) in topics.iter() {
                // Events and seconds reported per (instance, pubsub, topic, direction).
                let mut lines: BTreeMap<(&str, &str, &str, &str), (u64, f64)> = BTreeMap::new();
                for s in samples.iter().rev().take_while(|s| s.at >= since) {
                    let t = &s.topic;
                    let key = (t.pubsub.clone(), t.topic.clone());
                    let sides = out.entry(key).or_default();
                    let counted = if t.direction == "publish" {
                        let p = sides.0.entry(service.clone()).or_default();
                        p.published += t.published;
                        p.failed += t.failed;
                        t.published
                    } else {
                        let c = sides.1.entry(service.clone()).or_default();
                        c.delivered += t.delivered;
                        c.retried += t.retried;
                        c.dropped += t.dropped;
                        c.dead_lettered += t.dead_lettered;
                        t.delivered
                    };
                    let line = lines
                        .entry((&s.instance, &t.pubsub, &t.topic, &t.direction))
                        .or_default();
                    line.0 += counted;
                    line.1 += s.window.get().as_secs_f64();
                }
                for ((_, pubsub, topic, direction), (n, secs)) in lines {
                    let rate = n as f64 / secs.max(1.0);
                    let sides = out
                        .get_mut(&(pubsub.to_owned(), topic.to_owned()))
                        .expect("every line's topic was added above");
                    if direction == "publish" {
                        if let Some(p) = sides.0.get_mut(service) {
                            p.per_second += rate;
                        }
                    } else if let Some(c) = sides.1.get_mut(service) {
                        c.per_second += rate;
                    }
                }
            }
        }
        out.into_iter()
            .map(|((pubsub, topic), (publishers, consumers))| TopicView {
                pubsub,
                topic,
                publishers: publishers
                    .into_iter()
                    .map(|(service, p)| Publisher { service, ..p })
                    .collect(),
                consumers: consumers
                    .into_iter()
                    .map(|(service, c)| Consumer { service, ..c })
                    .collect(),
            })
            .collect()
    }
}
