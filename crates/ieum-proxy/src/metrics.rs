//! Prometheus metrics with Linkerd's names: `request_total`, `response_total`
//! (`classification`, `status_code`) and the `response_latency_ms` histogram, labelled
//! `direction`, `dst_service` and `route` — and, inbound on a sidecar with a mesh, `tls`
//! (`true`/`false`) and `client_id` (the caller's principal, empty without one), as
//! Linkerd's; and `ieum_authz_denied_total` (`caller`, `policy`) for calls in that
//! authorization denied.
//!
//! One [`RouteMetrics`] per label set, registered once (when a destination is first used)
//! and held by whoever records into it; recording is a few relaxed atomic additions, and
//! the registry's lock is only taken to register and to render.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

/// Upper bounds of the latency buckets, in milliseconds (Linkerd's).
const BUCKETS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1_000, 2_000, 3_000, 4_000, 5_000,
    10_000, 20_000, 30_000, 40_000, 50_000,
];
/// Status codes are counted in a flat array indexed by `code - 100`.
const CODES: usize = 500;

/// Whether traffic enters the app or leaves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Direction {
    /// Other services → this sidecar → the app.
    Inbound,
    /// The app → this sidecar → other services.
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Counters of one `direction`/`dst_service`/`route`.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    requests: AtomicU64,
    /// `[success, failure]` per status code.
    responses: [Box<[AtomicU64]>; 2],
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RouteMetrics {
    fn new() -> Self {
        let codes = || (0..CODES).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        RouteMetrics {
            requests: AtomicU64::new(0),
            responses: [codes(), codes()],
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// A request arrived.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Its response headers are ready after `latency`.
    pub(crate) fn response(&self, status: StatusCode, failure: bool, latency: Duration) {
        let i = usize::from(status.as_u16())
            .saturating_sub(100)
            .min(CODES - 1);
        self.responses[usize::from(failure)][i].fetch_add(1, Ordering::Relaxed);
        let ms = latency.as_millis();
        if let Some(b) = BUCKETS_MS.iter().position(|&le| ms <= u128::from(le)) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Cumulative traffic of one `direction` / `dst_service` / `route`, as sampled by
/// [`crate::Sidecar::traffic`]; two samples give the golden signals of the time between
/// them ([`Traffic::since`]), which the lifecycle reports to the server.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The service called (for inbound, this sidecar's own).
    pub dst_service: String,
    /// The route resource, or `default`.
    pub route: String,
    /// Requests received.
    pub requests: u64,
    /// Responses classified `success`.
    pub successes: u64,
    /// Responses classified `failure` (5xx, failing gRPC statuses).
    pub failures: u64,
    /// Latency histogram: upper bound in milliseconds and cumulative count.
    pub latency_ms: Vec<(u64, u64)>,
}

/// Requests per second, success rate and latency quantiles over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GoldenSignals {
    /// Requests per second.
    pub requests_per_second: f64,
    /// Share (0–1) of responses that succeeded; `None` without responses.
    pub success_rate: Option<f64>,
    /// Median latency in milliseconds (interpolated within its bucket).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
}

impl Traffic {
    /// The golden signals of the `window` since `earlier` (a previous sample of the same
    /// label set; `None` for everything since the start).
    pub fn since(&self, earlier: Option<&Traffic>, window: Duration) -> GoldenSignals {
        let before = |f: fn(&Traffic) -> u64| earlier.map_or(0, f);
        let requests = self.requests.saturating_sub(before(|t| t.requests));
        let ok = self.successes.saturating_sub(before(|t| t.successes));
        let failed = self.failures.saturating_sub(before(|t| t.failures));
        let answered = ok + failed;
        let buckets: Vec<(u64, u64)> = self
            .latency_ms
            .iter()
            .enumerate()
            .map(|(i, (le, n))| {
                let prev = earlier.and_then(|e| e.latency_ms.get(i)).map_or(0, |b| b.1);
                (*le, n.saturating_sub(prev))
            })
            .collect();
        let secs = window.as_secs_f64();
        GoldenSignals {
            requests_per_second: if secs > 0.0 {
                requests as f64 / secs
            } else {
                0.0
            },
            success_rate: (answered > 0).then(|| ok as f64 / answered as f64),
            p50_ms: quantile(&buckets, 0.5),
            p99_ms: quantile(&buckets, 0.99),
        }
    }
}

/// The `q` quantile of a cumulative histogram, interpolated linearly within the bucket
/// it falls in (as Prometheus' `histogram_quantile`); answers above the last bound are
/// reported as that bound.
fn quantile(cumulative: &[(u64, u64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0u64, 0u64);
    for &(le, n) in cumulative {
        if n as f64 >= rank {
            let in_bucket = (n - lower.1) as f64;
            let share = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 as f64 + (le - lower.0) as f64 * share);
        }
        lower = (le, n);
    }
    Some(lower.0 as f64)
}

/// `tls` and `client_id` of an inbound label set (a sidecar with a mesh only).
type PeerLabels = (bool, String);

type Key = (Direction, String, String, Option<PeerLabels>);

/// Most distinct `client_id`s of the inbound metrics; past it, new callers are counted as
/// `client_id="other"`. Principals are service names, so this is rarely reached.
pub(crate) const MAX_CLIENT_IDS: usize = 256;

/// Most `caller`/`policy` label sets of `ieum_authz_denied_total`; past it, new callers
/// are counted as `caller="other"` (so a flood of identities cannot grow `/metrics`).
pub(crate) const MAX_AUTHZ_LABEL_SETS: usize = 256;

/// `ieum_authz_denied_total`: calls into the service denied by authorization, by caller
/// (the principal, or `-` without a mesh identity) and policy (`-` for the implicit
/// default). Denials are rare next to requests, so one lock per denial is fine.
#[derive(Debug, Default)]
pub(crate) struct AuthzDenied {
    counts: Mutex<BTreeMap<(String, String), u64>>,
}

impl AuthzDenied {
    /// Counts one denial.
    pub(crate) fn denied(&self, caller: &str, policy: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (caller.to_owned(), policy.to_owned());
        let key = if counts.contains_key(&key) || counts.len() < MAX_AUTHZ_LABEL_SETS {
            key
        } else {
            ("other".to_owned(), key.1)
        };
        *counts.entry(key).or_default() += 1;
    }

    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ieum_authz_denied_total Calls into this service denied by authorization.\n",
        );
        out.push_str("# TYPE ieum_authz_denied_total counter\n");
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for ((caller, policy), n) in counts.iter() {
            let _ = writeln!(
                out,
                "ieum_authz_denied_total{{caller=\"{}\",policy=\"{}\"}} {n}",
                escape(caller),
                escape(policy)
            );
        }
    }
}

/// Connections accepted by one listener (Linkerd's `tcp_*` with `peer="src"`).
#[derive(Debug, Default)]
pub(crate) struct TcpMetrics {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl TcpMetrics {
    /// A connection was accepted; the guard counts it closed when dropped.
    pub(crate) fn open(self: &Arc<Self>) -> TcpGuard {
        self.opened.fetch_add(1, Ordering::Relaxed);
        TcpGuard(self.clone())
    }
}

/// An open connection.
#[derive(Debug)]
pub(crate) struct TcpGuard(Arc<TcpMetrics>);

impl Drop for TcpGuard {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Piped (opaque TCP) connections to one destination (Linkerd's `tcp_*` with
/// `peer="dst"`); bytes are the destination's, counted as they move.
#[derive(Debug, Default)]
pub(crate) struct TcpDst {
    opened: AtomicU64,
    closed: AtomicU64,
    /// Bytes read from the destination.
    pub(crate) read_bytes: AtomicU64,
    /// Bytes written to the destination.
    pub(crate) write_bytes: AtomicU64,
    connect_errors: AtomicU64,
}

impl TcpDst {
    /// A connection to the destination is open until the guard drops.
    pub(crate) fn open(self: &Arc<Self>) -> TcpDstGuard {
        self.opened.fetch_add(1, Ordering::Relaxed);
        TcpDstGuard(self.clone())
    }

    /// No connection to the destination could be made.
    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// An open piped connection.
#[derive(Debug)]
pub(crate) struct TcpDstGuard(Arc<TcpDst>);

impl Drop for TcpDstGuard {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every label set seen so far.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    routes: Mutex<BTreeMap<Key, Arc<RouteMetrics>>>,
    /// Piped connections by direction and destination service.
    tcp_dst: Mutex<BTreeMap<(Direction, String), Arc<TcpDst>>>,
    /// Accepted connections, inbound and outbound.
    pub(crate) tcp_inbound: Arc<TcpMetrics>,
    pub(crate) tcp_outbound: Arc<TcpMetrics>,
    /// Calls in denied by authorization.
    pub(crate) authz_denied: AuthzDenied,
}

impl Metrics {
    /// The counters of this label set, registered on first use.
    pub(crate) fn route(&self, dir: Direction, dst: &str, route: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry((dir, dst.to_owned(), route.to_owned(), None))
            .or_insert_with(|| Arc::new(RouteMetrics::new()))
            .clone()
    }

    /// The inbound counters of `dst` for connections with `tls` and `client_id` (empty
    /// without a client certificate), registered on first use; looked up once per
    /// connection. Past [`MAX_CLIENT_IDS`] callers, a new one is `client_id="other"`.
    pub(crate) fn inbound_peer(&self, dst: &str, tls: bool, client_id: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let key = |client_id: &str| {
            (
                Direction::Inbound,
                dst.to_owned(),
                "default".to_owned(),
                Some((tls, client_id.to_owned())),
            )
        };
        let mut k = key(client_id);
        if !routes.contains_key(&k) {
            let callers = routes.keys().filter(|k| k.3.is_some()).count();
            if callers >= MAX_CLIENT_IDS {
                k = key("other");
            }
        }
        routes
            .entry(k)
            .or_insert_with(|| Arc::new(RouteMetrics::new()))
            .clone()
    }

    /// The piped-connection counters of `direction` / `dst`, registered on first use.
    pub(crate) fn tcp_dst(&self, dir: Direction, dst: &str) -> Arc<TcpDst> {
        let mut m = self.tcp_dst.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((dir, dst.to_owned())).or_default().clone()
    }

    /// A sample of every `direction`/`dst_service`/`route` (the `tls`/`client_id` label
    /// sets of one summed).
    pub(crate) fn traffic(&self) -> Vec<Traffic> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Traffic> = Vec::new();
        let samples = routes.iter().map(|((dir, dst, route, _), m)| {
            let sum = |i: usize| {
                m.responses[i]
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum()
            };
            let mut cumulative = 0;
            let mut latency_ms: Vec<(u64, u64)> = BUCKETS_MS
                .iter()
                .zip(&m.buckets)
                .map(|(le, b)| {
                    cumulative += b.load(Ordering::Relaxed);
                    (*le, cumulative)
                })
                .collect();
            // Slower than the last bound: counted at the last bound.
            if let Some(last) = latency_ms.last_mut() {
                last.1 = last.1.max(m.count.load(Ordering::Relaxed));
            }
            Traffic {
                direction: dir.as_str(),
                dst_service: dst.clone(),
                route: route.clone(),
                requests: m.requests.load(Ordering::Relaxed),
                successes: sum(0),
                failures: sum(1),
                latency_ms,
            }
        });
        // Label sets of one route are adjacent: the peer labels sort last in the key.
        for t in samples {
            match out.last_mut() {
                Some(last)
                    if last.direction == t.direction
                        && last.dst_service == t.dst_service
                        && last.route == t.route =>
                {
                    last.requests += t.requests;
                    last.successes += t.successes;
                    last.failures += t.failures;
                    for (mine, theirs) in last.latency_ms.iter_mut().zip(&t.latency_ms) {
                        mine.1 += theirs.1;
                    }
                }
                _ => out.push(t),
            }
        }
        out
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let routes: Vec<(Key, Arc<RouteMetrics>)> = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        let labels = |(dir, dst, route, peer): &Key| {
            let mut l = format!(
                "direction=\"{}\",dst_service=\"{}\",route=\"{}\"",
                dir.as_str(),
                escape(dst),
                escape(route)
            );
            if let Some((tls, client_id)) = peer {
                let _ = write!(l, ",tls=\"{tls}\",client_id=\"{}\"", escape(client_id));
            }
            l
        };
        let tcp = [
            (Direction::Inbound, &self.tcp_inbound),
            (Direction::Outbound, &self.tcp_outbound),
        ];
        let dsts: Vec<((Direction, String), Arc<TcpDst>)> = self
            .tcp_dst
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, kind, help) in [
            (
                "tcp_open_total",
                "counter",
                "Total count of opened connections.",
            ),
            (
                "tcp_close_total",
                "counter",
                "Total count of closed connections.",
            ),
            (
                "tcp_open_connections",
                "gauge",
                "Number of currently-open connections.",
            ),
            (
                "tcp_read_bytes_total",
                "counter",
                "Total count of bytes read from peers.",
            ),
            (
                "tcp_write_bytes_total",
                "counter",
                "Total count of bytes written to peers.",
            ),
            (
                "tcp_connect_errors_total",
                "counter",
                "Total count of connections that could not be made to a destination.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((dir, dst), t) in &dsts {
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let n = match name {
                    "tcp_open_total" => load(&t.opened),
                    "tcp_close_total" => load(&t.closed),
                    "tcp_open_connections" => load(&t.opened).saturating_sub(load(&t.closed)),
                    "tcp_read_bytes_total" => load(&t.read_bytes),
                    "tcp_write_bytes_total" => load(&t.write_bytes),
                    _ => load(&t.connect_errors),
                };
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",peer=\"dst\",dst_service=\"{}\"}} {n}",
                    dir.as_str(),
                    escape(dst)
                );
            }
            if !matches!(
                name,
                "tcp_open_total" | "tcp_close_total" | "tcp_open_connections"
            ) {
                continue;
            }
            for (dir, t) in &tcp {
                let (opened, closed) = (
                    t.opened.load(Ordering::Relaxed),
                    t.closed.load(Ordering::Relaxed),
                );
                let n = match name {
                    "tcp_open_total" => opened,
                    "tcp_close_total" => closed,
                    _ => opened.saturating_sub(closed),
                };
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{}\",peer=\"src\"}} {n}",
                    dir.as_str()
                );
            }
        }
        out.push_str("# HELP request_total Total count of HTTP requests.\n");
        out.push_str("# TYPE request_total counter\n");
        for (k, m) in &routes {
            let n = m.requests.load(Ordering::Relaxed);
            let _ = writeln!(out, "request_total{{{}}} {n}", labels(k));
        }
        out.push_str("# HELP response_total Total count of HTTP responses.\n");
        out.push_str("# TYPE response_total counter\n");
        for (k, m) in &routes {
            for (class, counts) in ["success", "failure"].iter().zip(&m.responses) {
                for (i, c) in counts.iter().enumerate() {
                    let n = c.load(Ordering::Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "response_total{{{},classification=\"{class}\",status_code=\"{}\"}} {n}",
                            labels(k),
                            i + 100
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP response_latency_ms Elapsed times between a request's headers being received and its response headers being sent.\n",
        );
        out.push_str("# TYPE response_latency_ms histogram\n");
        for (k, m) in &routes {
            let l = labels(k);
            let mut cumulative = 0;
            for (le, b) in BUCKETS_MS.iter().zip(&m.buckets) {
                cumulative += b.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "response_latency_ms_bucket{{{l},le=\"{le}\"}} {cumulative}"
                );
            }
            let count = m.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "response_latency_ms_bucket{{{l},le=\"+Inf\"}} {count}");
            let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "response_latency_ms_sum{{{l}}} {sum}");
            let _ = writeln!(out, "response_latency_ms_count{{{l}}} {count}");
        }
        self.authz_denied.render(&mut out);
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_classifications_and_cumulative_buckets() {
        let m = Metrics::default();
        let r = m.route(Direction::Outbound, "stock", "default");
        r.request();
        r.request();
        r.response(StatusCode::OK, false, Duration::from_millis(3));
        r.response(
            StatusCode::SERVICE_UNAVAILABLE,
            true,
            Duration::from_millis(70),
        );
        let text = m.render();
        let l = r#"direction="outbound",dst_service="stock",route="default""#;
        assert!(text.contains(&format!("request_total{{{l}}} 2")), "{text}");
        assert!(text.contains(&format!(
            "response_total{{{l},classification=\"success\",status_code=\"200\"}} 1"
        )));
        assert!(text.contains(&format!(
            "response_total{{{l},classification=\"failure\",status_code=\"503\"}} 1"
        )));
        assert!(text.contains(&format!("response_latency_ms_bucket{{{l},le=\"3\"}} 1")));
        assert!(text.contains(&format!("response_latency_ms_bucket{{{l},le=\"50\"}} 1")));
        assert!(text.contains(&format!("response_latency_ms_bucket{{{l},le=\"100\"}} 2")));
        assert!(text.contains(&format!("response_latency_ms_count{{{l}}} 2")));
        assert!(Arc::ptr_eq(
            &r,
            &m.route(Direction::Outbound, "stock", "default")
        ));
    }

    #[test]
    fn authz_denials_are_counted_with_bounded_labels() {
        let m = Metrics::default();
        m.authz_denied.denied("reports", "stock-callers");
        m.authz_denied.denied("reports", "stock-callers");
        m.authz_denied.denied("-", "-");
        for i in 0..MAX_AUTHZ_LABEL_SETS + 10 {
            m.authz_denied.denied(&format!("svc-{i}"), "p");
        }
        let text = m.render();
        assert!(text.contains("# TYPE ieum_authz_denied_total counter"));
        assert!(
            text.contains("ieum_authz_denied_total{caller=\"reports\",policy=\"stock-callers\"} 2"),
            "{text}"
        );
        assert!(text.contains("ieum_authz_denied_total{caller=\"-\",policy=\"-\"} 1"));
        let lines = text
            .lines()
            .filter(|l| l.starts_with("ieum_authz_denied_total{"))
            .count();
        assert_eq!(lines, MAX_AUTHZ_LABEL_SETS + 1, "bounded, plus `other`");
        assert!(text.contains("ieum_authz_denied_total{caller=\"other\",policy=\"p\"} 12"));
    }

    #[test]
    fn inbound_peers_are_labelled_bounded_and_summed_in_samples() {
        let m = Metrics::default();
        let plain = m.inbound_peer("stock", false, "");
        let web = m.inbound_peer("stock", true, "web");
        assert!(Arc::ptr_eq(&web, &m.inbound_peer("stock", true, "web")));
        plain.request();
        plain.response(StatusCode::FORBIDDEN, false, Duration::from_millis(1));
        for _ in 0..3 {
            web.request();
            web.response(StatusCode::OK, false, Duration::from_millis(2));
        }
        let text = m.render();
        let l = r#"direction="inbound",dst_service="stock",route="default""#;
        assert!(
            text.contains(&format!(
                "request_total{{{l},tls=\"true\",client_id=\"web\"}} 3"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "request_total{{{l},tls=\"false\",client_id=\"\"}} 1"
        )));
        assert!(text.contains(&format!(
            "response_latency_ms_count{{{l},tls=\"true\",client_id=\"web\"}} 3"
        )));
        // One sample per route, whoever called.
        let t = m.traffic();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].requests, t[0].successes), (4, 4));
        assert_eq!(t[0].latency_ms.last().unwrap().1, 4);

        for i in 0..MAX_CLIENT_IDS + 5 {
            m.inbound_peer("stock", true, &format!("svc-{i}")).request();
        }
        let text = m.render();
        let sets = text
            .lines()
            .filter(|l| l.starts_with("request_total{direction=\"inbound\""))
            .count();
        assert_eq!(sets, MAX_CLIENT_IDS + 1, "bounded, plus `other`");
        assert!(text.contains(&format!(
            "request_total{{{l},tls=\"true\",client_id=\"other\"}} 7"
        )));
    }

    #[test]
    fn golden_signals_come_from_the_difference_of_two_samples() {
        let m = Metrics::default();
        let r = m.route(Direction::Inbound, "stock", "default");
        r.request();
        r.response(StatusCode::OK, false, Duration::from_millis(500));
        let first = m.traffic().remove(0);
        for i in 0..100u64 {
            r.request();
            let failure = i % 4 == 0;
            let code = if failure {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            // 98 answers within 10 ms, two slow ones.
            let ms = if i < 98 { 8 } else { 2_500 };
            r.response(code, failure, Duration::from_millis(ms));
        }
        let second = m.traffic().remove(0);
        assert_eq!((second.direction, second.requests), ("inbound", 101));
        let g = second.since(Some(&first), Duration::from_secs(10));
        assert_eq!(g.requests_per_second, 10.0);
        assert_eq!(g.success_rate, Some(0.75));
        let p50 = g.p50_ms.unwrap();
        assert!(p50 > 5.0 && p50 <= 10.0, "{p50}");
        let p99 = g.p99_ms.unwrap();
        assert!(p99 > 2_000.0 && p99 <= 3_000.0, "{p99}");
        let idle = second.since(Some(&second), Duration::from_secs(10));
        assert_eq!(
            (idle.requests_per_second, idle.success_rate, idle.p50_ms),
            (0.0, None, None)
        );
    }
}
