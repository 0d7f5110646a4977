//! The bridge's resources, read from the client's snapshot: `PubSub`s by name, the
//! subscriptions this service consumes (`Subscription`s and input `Binding`s naming it,
//! plus those the app declared), and the output `Binding`s it may send to.

use std::collections::BTreeMap;

use ieum_client::Snapshot;
use ieum_model::bridge::{
    BindingDirection, BindingFormat, BindingSpec, ContentMode, PubSubSpec, SubscriptionSpec,
};
use ieum_model::policy::Retry;
use serde::Serialize;

/// How a consumed event reaches the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum AppFormat {
    /// A CloudEvent in this HTTP content mode.
    CloudEvent(ContentMode),
    /// The payload alone, its `datacontenttype` as `Content-Type` (raw input bindings).
    Raw,
}

/// One subscription this sidecar should hold, whatever declared it. Two equal values are
/// the same subscription: a change of any field (or of its `PubSub`) restarts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Wanted {
    /// Who declared it: `Subscription/NAME`, `Binding/NAME` or `app`.
    pub(crate) origin: String,
    pub(crate) pubsub: String,
    /// The `PubSub`'s revision, so a change of the broker restarts the subscription.
    pub(crate) pubsub_revision: i64,
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) route: String,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) retry: Retry,
    pub(crate) max_in_flight: u32,
    pub(crate) ordering_key: String,
    pub(crate) format: AppFormat,
}

impl Wanted {
    /// The identity used to compare the wanted set with the running one.
    pub(crate) fn key(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{self:?}"))
    }

    /// A `Subscription` (from a resource or the app) as a wanted subscription.
    pub(crate) fn from_subscription(origin: String, s: &SubscriptionSpec, revision: i64) -> Self {
        Wanted {
            origin,
            pubsub: s.pubsub.as_str().to_owned(),
            pubsub_revision: revision,
            topic: s.topic.clone(),
            group: s.effective_group().as_str().to_owned(),
            route: s.route.clone(),
            dead_letter_topic: s.dead_letter_topic.clone(),
            retry: s.retry.clone(),
            max_in_flight: s.max_in_flight,
            ordering_key: s.ordering_key.clone(),
            format: AppFormat::CloudEvent(s.cloud_events.mode),
        }
    }
}

/// An output binding the app may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Output {
    pub(crate) pubsub: String,
    pub(crate) topic: String,
    pub(crate) format: BindingFormat,
    /// The only service allowed to send, when set.
    pub(crate) service: Option<String>,
}

/// The bridge's view of one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    /// `PubSub`s by name, with their revisions.
    pub(crate) pubsubs: BTreeMap<String, (PubSubSpec, i64)>,
    /// Subscriptions declared as resources for this service.
    pub(crate) subscriptions: Vec<Wanted>,
    /// Input bindings by name (their subscriptions are in `subscriptions`), and output
    /// bindings.
    pub(crate) outputs: BTreeMap<String, Output>,
    /// Resources that could not be read, with why.
    pub(crate) problems: Vec<String>,
}

impl Resources {
    /// Reads the bridge's resources that concern `service`.
    pub(crate) fn from_snapshot(s: &Snapshot, service: &str) -> Resources {
        let mut out = Resources::default();
        for (key, r) in &s.resources {
            if r.kind == "PubSub" {
                match serde_json::from_value::<PubSubSpec>(r.spec.clone()) {
                    Ok(spec) => {
                        out.pubsubs.insert(r.name.clone(), (spec, r.revision));
                    }
                    Err(e) => out.problems.push(format!("{key}: {e}")),
                }
            }
        }
        for (key, r) in &s.resources {
            let result = match r.kind.as_str() {
                "Subscription" => {
                    serde_json::from_value::<SubscriptionSpec>(r.spec.clone()).map(|spec| {
                        if spec.service.as_str() == service {
                            let revision = out.revision(spec.pubsub.as_str());
                            out.subscriptions.push(Wanted::from_subscription(
                                key.clone(),
                                &spec,
                                revision,
                            ));
                        }
                    })
                }
                "Binding" => serde_json::from_value::<BindingSpec>(r.spec.clone()).map(|spec| {
                    out.binding(key, &r.name, &spec, service);
                }),
                _ => Ok(()),
            };
            if let Err(e) = result {
                out.problems.push(format!("{key}: {e}"));
            }
        }
        out
    }

    fn revision(&self, pubsub: &str) -> i64 {
        self.pubsubs.get(pubsub).map_or(0, |(_, rev)| *rev)
    }

    fn binding(&mut self, key: &str, name: &str, spec: &BindingSpec, service: &str) {
        let mine = spec.service.as_ref().is_some_and(|s| s.as_str() == service);
        match spec.direction {
            BindingDirection::Output => {
                if mine || spec.service.is_none() {
                    self.outputs.insert(
                        name.to_owned(),
                        Output {
                            pubsub: spec.pubsub.as_str().to_owned(),
                            topic: spec.topic.clone(),
                            format: spec.format,
                            service: spec.service.as_ref().map(|s| s.as_str().to_owned()),
                        },
                    );
                }
            }
            BindingDirection::Input if mine => {
                let Some(route) = spec.route.clone() else {
                    self.problems
                        .push(format!("{key}: an input binding without a route"));
                    return;
                };
                let format = match spec.format {
                    BindingFormat::Raw => AppFormat::Raw,
                    BindingFormat::CloudEvents => AppFormat::CloudEvent(
                        self.pubsubs
                            .get(spec.pubsub.as_str())
                            .map_or(ContentMode::Binary, |(p, _)| p.cloud_events.mode),
                    ),
                };
                self.subscriptions.push(Wanted {
                    origin: key.to_owned(),
                    pubsub: spec.pubsub.as_str().to_owned(),
                    pubsub_revision: self.revision(spec.pubsub.as_str()),
                    topic: spec.topic.clone(),
                    group: service.to_owned(),
                    route,
                    dead_letter_topic: spec.dead_letter_topic.clone(),
                    retry: spec.retry.clone().unwrap_or_default(),
                    max_in_flight: spec
                        .max_in_flight
                        .unwrap_or(ieum_model::bridge::DEFAULT_MAX_IN_FLIGHT),
                    ordering_key: "partitionkey".to_owned(),
                    format,
                });
            }
            BindingDirection::Input => {}
        }
    }
}

/// Reads what the app answered to `GET /ieum/subscriptions`: a JSON list of subscriptions
/// (`pubsub`, `topic`, `route` and optionally every other field of a `Subscription` but
/// `service`). Entries that are not valid are skipped; each problem is returned to be
/// logged. Anything but a list means none.
pub(crate) fn app_declared(
    body: &[u8],
    service: &str,
    pubsubs: &BTreeMap<String, (PubSubSpec, i64)>,
) -> (Vec<SubscriptionSpec>, Vec<String>) {
    let list: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(serde_json::Value::Array(list)) => list,
        Ok(_) => {
            return (
                Vec::new(),
                vec!["GET /ieum/subscriptions did not answer a JSON list: no subscriptions declared by the app".to_owned()],
            );
        }
        Err(e) => {
            return (
                Vec::new(),
                vec![format!(
                    "GET /ieum/subscriptions did not answer JSON ({e}): no subscriptions declared by the app"
                )],
            );
        }
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, mut entry) in list.into_iter().enumerate() {
        let Some(obj) = entry.as_object_mut() else {
            problems.push(format!(
                "GET /ieum/subscriptions [{i}]: not an object, skipped"
            ));
            continue;
        };
        if obj.contains_key("service") {
            problems.push(format!(
                "GET /ieum/subscriptions [{i}]: `service` is not set by the app (it is always {service}), skipped"
            ));
            continue;
        }
        obj.insert("service".into(), service.into());
        let spec = match serde_json::from_value::<SubscriptionSpec>(entry) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("GET /ieum/subscriptions [{i}]: {e}, skipped"));
                continue;
            }
        };
        let mut v = ieum_model::Validator::new(format!("[{i}]"));
        spec.validate(&mut v);
        if let Err(errors) = v.finish() {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            problems.push(format!(
                "GET /ieum/subscriptions: {}, skipped",
                text.join("; ")
            ));
            continue;
        }
        if !pubsubs.contains_key(spec.pubsub.as_str()) {
            // Kept: the PubSub may be applied later; its subscription starts then.
            problems.push(format!(
                "GET /ieum/subscriptions [{i}]: PubSub `{}` is not defined yet; the subscription starts once it is",
                spec.pubsub
            ));
        }
        out.push(spec);
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pubsubs() -> BTreeMap<String, (PubSubSpec, i64)> {
        let spec: PubSubSpec = serde_json::from_str(r#"{"type":"memory"}"#).unwrap();
        [("bus".to_owned(), (spec, 3))].into_iter().collect()
    }

    #[test]
    fn app_declared_subscriptions_are_checked_entry_by_entry() {
        let body = br#"[
            {"pubsub":"bus","topic":"orders","route":"/orders","deadLetterTopic":"orders-dead"},
            {"pubsub":"bus","topic":"a b","route":"/x"},
            {"pubsub":"bus","topic":"x","route":"/x","service":"other"},
            {"pubsub":"bus","topic":"x","route":"/x","retyr":{}},
            {"pubsub":"later","topic":"x","route":"/x"},
            7
        ]"#;
        let (subs, problems) = app_declared(body, "billing", &pubsubs());
        let topics: Vec<&str> = subs.iter().map(|s| s.topic.as_str()).collect();
        assert_eq!(topics, ["orders", "x"]);
        assert_eq!(subs[0].service.as_str(), "billing");
        assert_eq!(subs[0].dead_letter_topic.as_deref(), Some("orders-dead"));
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(problems[0].contains("[1].topic"), "{}", problems[0]);
        assert!(problems[1].contains("`service`"), "{}", problems[1]);
        assert!(problems[2].contains("retyr"), "{}", problems[2]);
        assert!(
            problems[3].contains("`later` is not defined"),
            "{}",
            problems[3]
        );
        assert!(
            problems[4].contains("[5]: not an object"),
            "{}",
            problems[4]
        );
    }

    #[test]
    fn anything_but_a_list_means_none() {
        for body in [&b"{}"[..], b"not json", b"\"x\""] {
            let (subs, problems) = app_declared(body, "billing", &pubsubs());
            assert!(subs.is_empty());
            assert_eq!(problems.len(), 1);
        }
    }
}
