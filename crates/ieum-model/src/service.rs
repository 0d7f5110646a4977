//! The `Service` resource: what the registry knows about a service besides its instances.

use serde::{Deserialize, Serialize};

use crate::{Duration, Validator};

/// Longest free-text description.
const MAX_DESCRIPTION: usize = 4096;
/// Largest inline interface definition (an OpenAPI document or a `.proto`).
const MAX_INLINE_INTERFACE: usize = 512 * 1024;

/// The spec of a `Service` resource, and the body of `PUT /v1/services/{name}`.
///
/// One type serves both so a service declared in a YAML file and one registered over the
/// API read alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// What the service does, for people browsing the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who to call when it breaks (a team or a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Free-form tags for search and grouping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Interface definitions: OpenAPI, gRPC protobuf or AsyncAPI, by URL or inline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// The service level the owner promises; the UI compares it with what is observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<Sla>,
    /// Set for a system outside the mesh reached under this logical name (like a
    /// Kubernetes `ExternalName`): callers use the name, ieum resolves the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    /// What the service's sidecars accept on their inbound listeners while the mesh runs
    /// mTLS: `strict` (the default when unset) admits only mesh peers with a client
    /// certificate; `permissive` also admits plain-text callers, for migrating callers
    /// into the mesh. Unset is written as is, so existing revisions keep their meaning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsMode>,
}

/// Which callers a service's sidecars accept while the mesh runs mTLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mesh peers presenting a client certificate (the default).
    #[default]
    Strict,
    /// Mesh peers over mTLS and, for migration, callers in plain text (who have no mesh
    /// identity, so policies and `allow-mesh` treat them as such).
    Permissive,
}

impl MtlsMode {
    /// `strict` or `permissive`, as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "strict",
            MtlsMode::Permissive => "permissive",
        }
    }
}

impl ServiceSpec {
    /// The mTLS mode in effect: `strict` unless the spec says `permissive`.
    pub fn mtls_mode(&self) -> MtlsMode {
        self.mtls.unwrap_or_default()
    }

    /// The service's own OpenAPI document: the first `openapi` interface given inline that
    /// reads as an OpenAPI 3 document (`openapi: 3.x` and a `paths` object). One given by
    /// URL is never fetched, so it does not count.
    pub fn openapi_document(&self) -> Option<serde_json::Value> {
        self.interfaces
            .iter()
            .filter(|i| i.kind == InterfaceKind::Openapi)
            .filter_map(|i| i.document()?.ok())
            .find(|d| {
                d["openapi"].as_str().is_some_and(|v| v.starts_with("3.")) && d["paths"].is_object()
            })
    }
}

/// Reads an interface definition written in YAML or JSON (YAML is a superset of JSON, so
/// one parser reads both forms); `Err` says why it does not read.
pub fn parse_definition(text: &str) -> Result<serde_json::Value, String> {
    serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())
}

/// One interface definition of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    /// Which interface language the definition is written in.
    pub kind: InterfaceKind,
    /// Where the definition can be fetched (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The definition itself, for services that cannot serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// Interface definition languages the registry understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceKind {
    /// OpenAPI (Swagger) for HTTP APIs.
    Openapi,
    /// A protobuf service definition for gRPC.
    Grpc,
    /// AsyncAPI for event interfaces.
    Asyncapi,
}

/// A service level objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sla {
    /// Target availability in percent, e.g. `99.9`.
    pub availability: f64,
    /// Target 99th percentile latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<Duration>,
}

/// An external system behind a logical service name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct External {
    /// DNS name or IP address of the external system.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// Whether to connect with TLS.
    #[serde(default)]
    pub tls: bool,
}

impl ServiceSpec {
    /// Checks ranges and shapes; field paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        if let Some(d) = &self.description {
            v.check(d.len() <= MAX_DESCRIPTION, "E1101", "description", || {
                format!("must be at most {MAX_DESCRIPTION} bytes (is {})", d.len())
            });
        }
        if let Some(o) = &self.owner {
            v.check(
                !o.trim().is_empty() && o.len() <= 256,
                "E1101",
                "owner",
                || "must be 1 to 256 characters".into(),
            );
        }
        for (i, tag) in self.tags.iter().enumerate() {
            let ok = !tag.is_empty() && tag.len() <= 63 && !tag.contains(char::is_whitespace);
            v.check(ok, "E1102", &format!("tags[{i}]"), || {
                format!("`{tag}`: tags are 1 to 63 characters without spaces")
            });
            if self.tags[..i].contains(tag) {
                v.error(
                    "E1102",
                    &format!("tags[{i}]"),
                    format!("`{tag}` is listed twice"),
                );
            }
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            v.nested(&format!("interfaces[{i}]"), |v| iface.validate(v));
        }
        if let Some(sla) = &self.sla {
            v.check(
                sla.availability > 0.0 && sla.availability <= 100.0,
                "E1106",
                "sla.availability",
                || {
                    format!(
                        "must be a percentage above 0 and at most 100 (is {})",
                        sla.availability
                    )
                },
            );
            if let Some(p99) = sla.latency_p99 {
                v.check(!p99.is_zero(), "E1107", "sla.latencyP99", || {
                    "must be above 0s".into()
                });
            }
        }
        if let Some(ext) = &self.external {
            v.check(valid_host(&ext.host), "E1108", "external.host", || {
                format!("`{}` is not a DNS name or IP address", ext.host)
            });
            v.check(ext.port != 0, "E1109", "external.port", || {
                "must be between 1 and 65535".into()
            });
            v.check(self.mtls.is_none(), "E1110", "mtls", || {
                "an external service has no sidecar to accept mTLS: remove `mtls`, or \
                 `external` if the service runs in the mesh"
                    .into()
            });
        }
    }
}

impl Interface {
    /// The inline definition as a JSON value (see [`parse_definition`]); `None` when it is
    /// given by URL. Not meaningful for `grpc` (a `.proto` file is not YAML).
    pub fn document(&self) -> Option<Result<serde_json::Value, String>> {
        self.inline.as_deref().map(parse_definition)
    }

    fn validate(&self, v: &mut Validator) {
        match (&self.url, &self.inline) {
            (Some(_), Some(_)) | (None, None) => {
                v.error("E1103", "", "set exactly one of `url` or `inline`");
            }
            (Some(url), None) => {
                let ok =
                    (url.starts_with("http://") || url.starts_with("https://")) && url.len() > 8;
                v.check(ok, "E1104", "url", || {
                    format!("`{url}` must be an http:// or https:// URL")
                });
            }
            (None, Some(inline)) => {
                v.check(
                    inline.len() <= MAX_INLINE_INTERFACE,
                    "E1105",
                    "inline",
                    || {
                        format!(
                            "must be at most {} KiB; serve larger definitions by `url`",
                            MAX_INLINE_INTERFACE / 1024
                        )
                    },
                );
            }
        }
    }
}

/// Whether `host` looks like a DNS name or an IP address.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: &ServiceSpec) -> Vec<String> {
        let mut v = Validator::new("");
        spec.validate(&mut v);
        v.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_full_spec_parses_and_validates() {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "description": "Takes orders",
            "owner": "team-checkout",
            "tags": ["shop"],
            "interfaces": [{"kind": "openapi", "url": "http://orders/openapi.json"},
                           {"kind": "grpc", "inline": "service Orders {}"}],
            "sla": {"availability": 99.9, "latencyP99": "200ms"}
        }))
        .unwrap();
        assert!(errors(&spec).is_empty());
        assert_eq!(
            spec.sla.unwrap().latency_p99,
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_value::<ServiceSpec>(serde_json::json!({"descripton": "x"}))
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `descripton`"),
            "{err}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let spec = ServiceSpec {
            tags: vec!["a b".into(), "x".into(), "x".into()],
            interfaces: vec![Interface {
                kind: InterfaceKind::Openapi,
                url: None,
                inline: None,
            }],
            sla: Some(Sla {
                availability: 120.0,
                latency_p99: Some(Duration::ZERO),
            }),
            external: Some(External {
                host: "bad host".into(),
                port: 0,
                tls: false,
            }),
            mtls: Some(MtlsMode::Permissive),
            ..ServiceSpec::default()
        };
        let errs = errors(&spec);
        let expect = [
            "E1102 tags[0]",
            "E1102 tags[2]",
            "E1103 interfaces[0]",
            "E1106 sla.availability",
            "E1107 sla.latencyP99",
            "E1108 external.host",
            "E1109 external.port",
            "E1110 mtls",
        ];
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        for (e, want) in errs.iter().zip(expect) {
            assert!(e.starts_with(want), "{e} should start with {want}");
        }
    }

    #[test]
    fn mtls_is_strict_unless_permissive_and_takes_only_the_two_words() {
        assert_eq!(ServiceSpec::default().mtls_mode(), MtlsMode::Strict);
        let spec: ServiceSpec =
            serde_json::from_value(serde_json::json!({"mtls": "permissive"})).unwrap();
        assert_eq!(spec.mtls_mode(), MtlsMode::Permissive);
        assert!(errors(&spec).is_empty());
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::json!({"mtls": "permissive"})
        );
        // Unset stays unset, so specs written before the field keep their revisions.
        assert_eq!(
            serde_json::to_value(ServiceSpec::default()).unwrap(),
            serde_json::json!({})
        );
        let err = serde_json::from_value::<ServiceSpec>(serde_json::json!({"mtls": "off"}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `off`, expected `strict` or `permissive`"),
            "{err}"
        );
    }

    #[test]
    fn hosts() {
        assert!(valid_host("api.payments.example"));
        assert!(valid_host("10.0.0.1"));
        assert!(valid_host("::1"));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("-a.b"));
        assert!(!valid_host(""));
    }
}

/// How many instances a service has in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceCounts {
    /// All registered instances.
    pub total: usize,
    /// `up`.
    pub up: usize,
    /// `starting`.
    pub starting: usize,
    /// `draining`.
    pub draining: usize,
    /// `down`.
    pub down: usize,
}

/// One line of `GET /v1/services`: a service and what a person wants to know at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Description from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Owner from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Whether this name stands for an external system.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// Instances per state.
    pub instances: InstanceCounts,
    /// Zones its instances run in.
    pub zones: Vec<String>,
    /// Regions its instances run in.
    pub regions: Vec<String>,
    /// Platforms its instances run on.
    pub platforms: Vec<String>,
    /// Uptime of the instance up the longest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_uptime: Option<Duration>,
    /// Uptime of the instance up the shortest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_uptime: Option<Duration>,
    /// The service's latest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<crate::Event>,
    /// Revision of the service definition.
    pub revision: i64,
}

/// `GET /v1/services/{name}`: the definition and every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Labels of the `Service` resource.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The definition.
    pub spec: ServiceSpec,
    /// Revision of the definition.
    pub revision: i64,
    /// When the service was first defined.
    pub created_at: crate::Timestamp,
    /// When its definition last changed.
    pub updated_at: crate::Timestamp,
    /// Instances per state.
    pub counts: InstanceCounts,
    /// Every registered instance, by id.
    pub instances: Vec<crate::Instance>,
}
