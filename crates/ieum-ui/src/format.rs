//! How numbers, durations and times read on the pages: `3h 12m`, `4m ago` with the
//! absolute time in `title`, `12.5`, `99.95%`, `38 ms`.

use ieum_model::{Duration, InstanceState, Timestamp};
use maud::{Markup, html};

/// A duration as people read an uptime: the two largest units, `45s`, `12m 5s`,
/// `3h 12m`, `2d 4h`.
pub(crate) fn duration(d: Duration) -> String {
    let s = d.get().as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match () {
        () if days > 0 => format!("{days}d {hours}h"),
        () if hours > 0 => format!("{hours}h {mins}m"),
        () if mins > 0 => format!("{mins}m {secs}s"),
        () => format!("{secs}s"),
    }
}

/// `at` relative to `now` in words (`just now`, `4m 10s ago`).
pub(crate) fn ago(at: Timestamp, now: Timestamp) -> String {
    if at > now {
        return format!("in {}", duration(at.since(now)));
    }
    let d = now.since(at);
    if d.get().as_secs() < 5 {
        "just now".into()
    } else {
        format!("{} ago", duration(d))
    }
}

/// A relative time with the absolute one in `title` (and `datetime`, which the live
/// script reads to keep the words current).
pub(crate) fn time(at: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(at) title=(at) data-rel { (ago(at, now)) }
    }
}

/// Requests per second: one decimal below 100, none above.
pub(crate) fn rate(rps: f64) -> String {
    if rps >= 100.0 {
        format!("{rps:.0}")
    } else {
        format!("{rps:.1}")
    }
}

/// A share (0–1) as a percentage with enough decimals to tell 99.9 from 99.99.
pub(crate) fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (99.0..100.0).contains(&p) {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// A share of failures (0–1) as a percentage: small ones keep two decimals, so 0.05%
/// does not read as none.
pub(crate) fn error_percent(share: f64) -> String {
    let p = share * 100.0;
    if p <= 0.0 {
        "0%".into()
    } else if p < 1.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Milliseconds: whole above 10, one decimal below.
pub(crate) fn millis(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The colour class of a state badge.
pub(crate) fn state_class(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Up => "ok",
        InstanceState::Starting | InstanceState::Draining => "warn",
        InstanceState::Down => "bad",
    }
}

/// A badge: `class` is `ok`, `warn`, `bad` or `idle`.
pub(crate) fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

/// How a breaker state reads: the mesh says `allowed`/`blocked`/`probing`, people say
/// closed/open/half-open; the badge shows the latter with the former in `title`.
pub(crate) fn breaker(state: &str) -> Markup {
    let (class, word) = match state {
        "blocked" => ("bad", "open"),
        "probing" => ("warn", "half-open"),
        "allowed" => ("ok", "closed"),
        _ => ("idle", state),
    };
    html! { span class={ "badge " (class) } title={ "the sidecar reports " (state) } { (word) } }
}

/// An empty cell's content.
pub(crate) const NONE: &str = "—";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_uptimes() {
        assert_eq!(duration(Duration::from_secs(0)), "0s");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(725)), "12m 5s");
        assert_eq!(
            duration(Duration::from_secs(3 * 3600 + 12 * 60 + 9)),
            "3h 12m"
        );
        assert_eq!(
            duration(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d 4h"
        );
    }

    #[test]
    fn relative_times() {
        let now = Timestamp::from_millis(1_000_000);
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now.minus(Duration::from_secs(250)), now), "4m 10s ago");
        assert_eq!(ago(now.plus(Duration::from_secs(10)), now), "in 10s");
    }

    #[test]
    fn numbers() {
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(1234.5), "1234");
        assert_eq!(percent(0.9995), "99.95%");
        assert_eq!(percent(0.5), "50.0%");
        assert_eq!(percent(1.0), "100.0%");
        assert_eq!(error_percent(0.0), "0%");
        assert_eq!(error_percent(0.0005), "0.05%");
        assert_eq!(error_percent(0.2), "20.0%");
        assert_eq!(millis(3.26), "3.3 ms");
        assert_eq!(millis(38.4), "38 ms");
    }
}
