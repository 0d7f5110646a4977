//! Declarative resources: the `apiVersion / kind / metadata / spec` envelope, the kinds
//! ieum knows, multi-document YAML, validation of a whole resource, JSON Schemas and
//! semantic diffs between revisions.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{ApiConsumerSpec, ApiKeySpec, ApiSpec};
use crate::authz::AuthorizationPolicySpec;
use crate::bridge::{BindingSpec, PubSubSpec, SubscriptionSpec};
use crate::flow::FlowSpec;
use crate::policy::{FaultInjectionSpec, RateLimitPolicySpec, ResiliencePolicySpec};
use crate::route::RouteSpec;
use crate::saga::SagaSpec;
use crate::{Name, ServiceSpec, ValidationError, Validator};

/// The API version of every resource kind in this release.
pub const API_VERSION: &str = "ieum.dev/v1";

/// A resource as users write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource {
    /// Always `ieum.dev/v1`.
    pub api_version: String,
    /// `Service`, `Route`, `ResiliencePolicy`, `RateLimitPolicy`, `FaultInjection`,
    /// `PubSub`, `Subscription`, `Binding`, `Saga`, `Flow`, `AuthorizationPolicy`, `Api` or `ApiConsumer`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// The kind's spec.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// `metadata` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label, unique within the kind.
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The kinds of resource ieum stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A service definition (also written by `PUT /v1/services/{name}`).
    Service,
    /// Routing rules for calls to a service.
    Route,
    /// Timeouts, retries, breakers, balancing for a service or route.
    ResiliencePolicy,
    /// A local rate limit.
    RateLimitPolicy,
    /// Injected delays and aborts.
    FaultInjection,
    /// A broker connection for the sidecar bridge.
    PubSub,
    /// A topic delivered into a service's route.
    Subscription,
    /// A queue or topic of a system outside the mesh, read into or written from an app.
    Binding,
    /// Steps with compensations, run by the saga coordinator.
    Saga,
    /// A stateless orchestration answered at `POST /v1/flows/{name}`.
    Flow,
    /// Who may call a service, and with which requests (enforced by its sidecars).
    AuthorizationPolicy,
    /// A public API published by gateways.
    Api,
    /// Who may call which `Api`s.
    ApiConsumer,
    /// The hash of one API key of an `ApiConsumer`: created by `POST /v1/apikeys`, never
    /// applied ([`applicable`]).
    ApiKey,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::Service,
        Kind::Route,
        Kind::ResiliencePolicy,
        Kind::RateLimitPolicy,
        Kind::FaultInjection,
        Kind::PubSub,
        Kind::Subscription,
        Kind::Binding,
        Kind::Saga,
        Kind::Flow,
        Kind::AuthorizationPolicy,
        Kind::Api,
        Kind::ApiConsumer,
        Kind::ApiKey,
    ];

    /// The kind's name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Route => "Route",
            Kind::ResiliencePolicy => "ResiliencePolicy",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::FaultInjection => "FaultInjection",
            Kind::PubSub => "PubSub",
            Kind::Subscription => "Subscription",
            Kind::Binding => "Binding",
            Kind::Saga => "Saga",
            Kind::Flow => "Flow",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Api => "Api",
            Kind::ApiConsumer => "ApiConsumer",
            Kind::ApiKey => "ApiKey",
        }
    }

    /// Parses a kind as people type it: any case, singular or plural (`routes`,
    /// `resiliencepolicy`, `Service`).
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let singular = lower
            .strip_suffix("ies")
            .map(|stem| format!("{stem}y"))
            .or_else(|| lower.strip_suffix('s').map(str::to_owned))
            .unwrap_or_else(|| lower.clone());
        Kind::ALL.into_iter().find(|k| {
            let name = k.as_str().to_ascii_lowercase();
            name == lower || name == singular
        })
    }

    /// The kinds' names, for messages.
    pub fn names() -> String {
        Kind::ALL.map(Kind::as_str).join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource whose spec parsed and validated, with its spec normalized (defaults
/// written out) so that stored revisions and diffs compare meaning, not spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: Name,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The normalized spec.
    pub spec: serde_json::Value,
    /// Services the resource concerns: whose timeline records its changes, and whose
    /// existence is checked (an unknown one is a warning).
    pub services: Vec<Name>,
}

impl Checked {
    /// `Kind/name`, as messages show it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Parses every document of a YAML (or JSON) text. An empty document (`---` alone) is
/// skipped. Errors name the document (1-based) and the line.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ValidationError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| yaml_error(i, &e))?;
        if value.is_null() {
            continue;
        }
        let resource: Resource = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let code = if inner.to_string().starts_with("unknown field") {
                "E1002"
            } else {
                "E1005"
            };
            ValidationError::new(
                code,
                if field == "." { String::new() } else { field },
                format!("document {}: {inner}", i + 1),
            )
        })?;
        out.push(resource);
    }
    Ok(out)
}

fn yaml_error(doc: usize, e: &serde_yaml_ng::Error) -> ValidationError {
    let at = e
        .location()
        .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
        .unwrap_or_default();
    ValidationError::new("E1001", "", format!("document {}{at}: {e}", doc + 1))
}

/// Parses a spec of type `T` from JSON, with errors whose field paths start at `spec`.
fn spec_of<T: DeserializeOwned>(spec: &serde_json::Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        let inner = e.into_inner().to_string();
        let code = if inner.starts_with("unknown field") {
            "E1002"
        } else {
            "E1005"
        };
        ValidationError::new(code, field, inner)
    })
}

fn normalized<T: Serialize>(spec: &T) -> serde_json::Value {
    serde_json::to_value(spec).unwrap_or(serde_json::Value::Null)
}

/// Whether users may write `resource` with `apply` (and so `validate` and `diff` it): every
/// kind but `ApiKey`, which only `POST /v1/apikeys` creates, so that every key is one the
/// server generated (`E3406`, on field `kind`, otherwise).
pub fn applicable(resource: &Resource) -> Result<(), ValidationError> {
    if Kind::parse(&resource.kind) == Some(Kind::ApiKey) {
        return Err(ValidationError::new(
            "E3406",
            "kind",
            "API keys are not applied: create one with `ieum apikey create CONSUMER` \
             (POST /v1/apikeys), which prints the key once; revoke it with \
             `ieum apikey revoke ID`",
        ));
    }
    Ok(())
}

/// Checks a resource completely: envelope, kind, name, spec shape, ranges. Every problem
/// is reported; none is fatal to the others.
pub fn check(resource: &Resource) -> Result<Checked, Vec<ValidationError>> {
    let mut errors = Vec::new();
    if resource.api_version != API_VERSION {
        errors.push(ValidationError::new(
            "E2000",
            "apiVersion",
            format!(
                "`{}` is not supported: use {API_VERSION}",
                resource.api_version
            ),
        ));
    }
    let kind = Kind::parse(&resource.kind).filter(|k| k.as_str() == resource.kind);
    if kind.is_none() {
        errors.push(ValidationError::new(
            "E2000",
            "kind",
            format!("`{}` is not a kind: use {}", resource.kind, Kind::names()),
        ));
    }
    let name = Name::parse_field(&resource.metadata.name, "metadata.name");
    if let Err(e) = &name {
        errors.push(e.clone());
    }
    let (Some(kind), Ok(name)) = (kind, name) else {
        return Err(errors);
    };
    let spec = if resource.spec.is_null() {
        serde_json::json!({})
    } else {
        resource.spec.clone()
    };
    let mut v = Validator::new("spec");
    let parsed = match kind {
        Kind::Service => spec_of::<ServiceSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), vec![name.clone()])
        }),
        Kind::Route => spec_of::<RouteSpec>(&spec).map(|s| {
            s.validate(&mut v);
            let mut services = vec![s.service.clone()];
            services.extend(s.backend_services().filter(|b| **b != s.service).cloned());
            services.dedup();
            (normalized(&s), services)
        }),
        Kind::ResiliencePolicy => spec_of::<ResiliencePolicySpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
        Kind::RateLimitPolicy => spec_of::<RateLimitPolicySpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
        Kind::FaultInjection => spec_of::<FaultInjectionSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
        Kind::PubSub => spec_of::<PubSubSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
        Kind::Subscription => spec_of::<SubscriptionSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), vec![s.service.clone()])
        }),
        Kind::Binding => spec_of::<BindingSpec>(&spec).map(|s| {
            s.validate(&mut v);
            let services = s.service.iter().cloned().collect();
            (normalized(&s), services)
        }),
        Kind::Saga => spec_of::<SagaSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), s.services())
        }),
        Kind::Flow => spec_of::<FlowSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), s.services())
        }),
        Kind::AuthorizationPolicy => spec_of::<AuthorizationPolicySpec>(&spec).map(|s| {
            s.validate(&mut v);
            // The target joins `services` below, as for every policy.
            (normalized(&s), Vec::new())
        }),
        Kind::Api => spec_of::<ApiSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), s.services())
        }),
        Kind::ApiConsumer => spec_of::<ApiConsumerSpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
        Kind::ApiKey => spec_of::<ApiKeySpec>(&spec).map(|s| {
            s.validate(&mut v);
            (normalized(&s), Vec::new())
        }),
    };
    let (spec, mut services) = match parsed {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    if let Err(mut e) = v.finish() {
        errors.append(&mut e);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let target = spec.get("targetRef");
    if let Some((Some("Service"), Some(n))) =
        target.map(|t| (t["kind"].as_str(), t["name"].as_str()))
    {
        services.extend(Name::parse(n).ok());
    }
    Ok(Checked {
        kind,
        name,
        labels: resource.metadata.labels.clone(),
        spec,
        services,
    })
}

/// One difference between two JSON documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Where, as a field path (`spec.rules[0].timeouts.request`).
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub op: String,
    /// The value before (absent when added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// The value after (absent when removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

/// The differences from `before` to `after`, field by field, keys in alphabetical order.
/// Arrays are compared element by element.
pub fn diff(before: &serde_json::Value, after: &serde_json::Value, path: &str) -> Vec<Change> {
    let mut out = Vec::new();
    diff_into(before, after, path, &mut out);
    out
}

fn diff_into(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut Vec<Change>) {
    use serde_json::Value;
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff_into(va, vb, &child(k), out),
                    None => out.push(Change {
                        path: child(k),
                        op: "removed".into(),
                        before: Some(va.clone()),
                        after: None,
                    }),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(Change {
                        path: child(k),
                        op: "added".into(),
                        before: None,
                        after: Some(vb.clone()),
                    });
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => diff_into(va, vb, &p, out),
                    (Some(va), None) => out.push(Change {
                        path: p,
                        op: "removed".into(),
                        before: Some(va.clone()),
                        after: None,
                    }),
                    (None, Some(vb)) => out.push(Change {
                        path: p,
                        op: "added".into(),
                        before: None,
                        after: Some(vb.clone()),
                    }),
                    (None, None) => {}
                }
            }
        }
        _ if a != b => out.push(Change {
            path: path.to_owned(),
            op: "changed".into(),
            before: Some(a.clone()),
            after: Some(b.clone()),
        }),
        _ => {}
    }
}

fn schema_of<T: utoipa::ToSchema>() -> (
    serde_json::Value,
    serde_json::Map<String, serde_json::Value>,
) {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    let mut defs = serde_json::Map::new();
    for (name, schema) in deps {
        defs.insert(name, serde_json::to_value(schema).unwrap_or_default());
    }
    (serde_json::to_value(T::schema()).unwrap_or_default(), defs)
}

/// The JSON Schema (2020-12) of a whole resource of `kind`, for editors
/// (`# yaml-language-server: $schema=…`).
pub fn json_schema(kind: Kind) -> serde_json::Value {
    let (spec, defs) = match kind {
        Kind::Service => schema_of::<ServiceSpec>(),
        Kind::Route => schema_of::<RouteSpec>(),
        Kind::ResiliencePolicy => schema_of::<ResiliencePolicySpec>(),
        Kind::RateLimitPolicy => schema_of::<RateLimitPolicySpec>(),
        Kind::FaultInjection => schema_of::<FaultInjectionSpec>(),
        Kind::PubSub => schema_of::<PubSubSpec>(),
        Kind::Subscription => schema_of::<SubscriptionSpec>(),
        Kind::Binding => schema_of::<BindingSpec>(),
        Kind::Saga => schema_of::<SagaSpec>(),
        Kind::Flow => schema_of::<FlowSpec>(),
        Kind::AuthorizationPolicy => schema_of::<AuthorizationPolicySpec>(),
        Kind::Api => schema_of::<ApiSpec>(),
        Kind::ApiConsumer => schema_of::<ApiConsumerSpec>(),
        Kind::ApiKey => schema_of::<ApiKeySpec>(),
    };
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": kind.as_str(),
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind.as_str()},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
            "spec": spec
        },
        "$defs": defs,
    });
    // utoipa writes OpenAPI references; a standalone JSON Schema keeps them in `$defs`.
    let text = schema
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    serde_json::from_str(&text).unwrap_or(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_as_people_type_them() {
        assert_eq!(Kind::parse("routes"), Some(Kind::Route));
        assert_eq!(Kind::parse("Route"), Some(Kind::Route));
        assert_eq!(
            Kind::parse("resiliencepolicies"),
            Some(Kind::ResiliencePolicy)
        );
        assert_eq!(Kind::parse("FAULTINJECTION"), Some(Kind::FaultInjection));
        assert_eq!(Kind::parse("pubsubs"), Some(Kind::PubSub));
        assert_eq!(Kind::parse("subscriptions"), Some(Kind::Subscription));
        assert_eq!(Kind::parse("Binding"), Some(Kind::Binding));
        assert_eq!(
            Kind::parse("authorizationpolicies"),
            Some(Kind::AuthorizationPolicy)
        );
        assert_eq!(Kind::parse("svc"), None);
        assert_eq!(Kind::parse("widgets"), None);
    }

    #[test]
    fn multi_document_yaml_parses_and_checks() {
        let text = r#"
apiVersion: ieum.dev/v1
kind: Service
metadata: {name: orders, labels: {team: checkout}}
spec: {description: Takes orders}
---
---
apiVersion: ieum.dev/v1
kind: Route
metadata: {name: orders-api}
spec:
  service: orders
  rules:
  - backends: [{service: orders, version: v2}, {service: stock}]
"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2, "the empty document is skipped");
        let service = check(&docs[0]).unwrap();
        assert_eq!(service.id(), "Service/orders");
        assert_eq!(service.labels["team"], "checkout");
        let route = check(&docs[1]).unwrap();
        assert_eq!(
            route.services.iter().map(Name::as_str).collect::<Vec<_>>(),
            ["orders", "stock"]
        );
        // Defaults are written out, so revisions compare meaning.
        assert_eq!(route.spec["rules"][0]["backends"][0]["weight"], 1);
    }

    #[test]
    fn envelope_and_spec_errors_point_at_fields() {
        let text = "apiVersion: ieum.dev/v2\nkind: Routes\nmetadata: {name: Bad_Name}\nspec: {}\n";
        let doc = &parse_documents(text).unwrap()[0];
        let errs = check(doc).unwrap_err();
        let got: Vec<_> = errs
            .iter()
            .map(|e| format!("{} {}", e.code, e.field))
            .collect();
        assert_eq!(
            got,
            ["E2000 apiVersion", "E2000 kind", "E1004 metadata.name"]
        );

        let text = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: orders, rules: [{retry: {attempts: 11}}, {timeout: 1s}]}\n";
        let errs = check(&parse_documents(text).unwrap()[0]).unwrap_err();
        assert_eq!(errs[0].code, "E1002");
        assert_eq!(errs[0].field, "spec.rules[1].timeout");

        let text = "apiVersion: ieum.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: orders, rules: [{}, {retry: {attempts: 11}}]}\n";
        let errs = check(&parse_documents(text).unwrap()[0]).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "E2104 spec.rules[1].retry.attempts: must be at most 10 (is 11)"
        );
    }

    #[test]
    fn bridge_kinds_check_normalize_and_name_their_services() {
        let text = r#"
apiVersion: ieum.dev/v1
kind: PubSub
metadata: {name: bus}
spec:
  type: nats-jetstream
  url: nats://127.0.0.1:4222
  credentials: {fromEnv: NATS_TOKEN}
---
apiVersion: ieum.dev/v1
kind: Subscription
metadata: {name: billing-orders}
spec:
  pubsub: bus
  topic: orders
  service: billing
  route: /events/orders
  deadLetterTopic: orders-dead
  retry: {attempts: 5, backoff: 100ms, maxBackoff: 10s}
  maxInFlight: 32
  orderingKey: subject
---
apiVersion: ieum.dev/v1
kind: Binding
metadata: {name: invoices}
spec: {pubsub: bus, direction: output, topic: invoices, service: billing}
"#;
        let docs = parse_documents(text).unwrap();
        let pubsub = check(&docs[0]).unwrap();
        assert_eq!(pubsub.id(), "PubSub/bus");
        assert_eq!(pubsub.spec["cloudEvents"]["mode"], "binary");
        assert_eq!(pubsub.spec["credentials"]["fromEnv"], "NATS_TOKEN");
        assert!(pubsub.services.is_empty());
        let sub = check(&docs[1]).unwrap();
        assert_eq!(sub.services, [Name::parse("billing").unwrap()]);
        assert_eq!(
            sub.spec["retry"]["codes"],
            serde_json::json!([502, 503, 504])
        );
        let binding = check(&docs[2]).unwrap();
        assert_eq!(binding.spec["format"], "raw");
        assert_eq!(binding.services, [Name::parse("billing").unwrap()]);

        let text =
            "apiVersion: ieum.dev/v1\nkind: PubSub\nmetadata: {name: bus}\nspec: {type: kafak}\n";
        let errs = check(&parse_documents(text).unwrap()[0]).unwrap_err();
        assert_eq!(
            (errs[0].code.as_str(), errs[0].field.as_str()),
            ("E1005", "spec.type")
        );
        let text = "apiVersion: ieum.dev/v1\nkind: Subscription\nmetadata: {name: s}\nspec: {pubsub: bus, topic: 'a b', service: billing, route: /x}\n";
        let errs = check(&parse_documents(text).unwrap()[0]).unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "E3010 spec.topic: `a b` has ` `: use letters, digits, `.`, `_` and `-`"
        );
    }

    #[test]
    fn broken_yaml_names_the_document_and_line() {
        let text =
            "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n";
        let err = parse_documents(text).unwrap_err();
        assert_eq!(err.code, "E1001");
        assert!(
            err.message.starts_with("document 2 (line"),
            "{}",
            err.message
        );
        let err = parse_documents(
            "apiVersion: ieum.dev/v1\nkind: Service\nmetadata: {name: a}\nspce: {}\n",
        )
        .unwrap_err();
        assert_eq!((err.code.as_str(), err.field.as_str()), ("E1002", "spce"));
    }

    #[test]
    fn diffs_list_changed_added_and_removed_fields() {
        let a = serde_json::json!({"rules": [{"timeouts": {"request": "2s"}, "backends": [1]}], "x": 1});
        let b = serde_json::json!({"rules": [{"timeouts": {"request": "3s"}, "backends": [1, 2]}], "y": 2});
        let d = diff(&a, &b, "spec");
        let got: Vec<_> = d.iter().map(|c| format!("{} {}", c.op, c.path)).collect();
        assert_eq!(
            got,
            [
                "added spec.rules[0].backends[1]",
                "changed spec.rules[0].timeouts.request",
                "removed spec.x",
                "added spec.y"
            ]
        );
        assert!(diff(&a, &a, "spec").is_empty());
    }

    #[test]
    fn every_kind_has_a_json_schema_without_dangling_references() {
        for kind in Kind::ALL {
            let schema = json_schema(kind);
            assert_eq!(schema["properties"]["kind"]["const"], kind.as_str());
            let text = schema.to_string();
            assert!(!text.contains("#/components/"), "{kind}");
            let defs = schema["$defs"].as_object().unwrap();
            for (i, _) in text.match_indices("#/$defs/") {
                let name: String = text[i + 8..].chars().take_while(|c| *c != '"').collect();
                assert!(defs.contains_key(&name), "{kind}: $defs/{name} is missing");
            }
        }
    }
}
