//! What requests are matched against, compiled from the snapshot: the `Api`s by base path
//! (longest first), which consumer holds each API key, and which APIs each consumer may use.

use std::collections::{BTreeSet, HashMap};

use ieum_client::Snapshot;
use ieum_model::Timestamp;
use ieum_model::api::{ApiKeySpec, ApiSpec};

/// The gateway's view of its resources, rebuilt on every snapshot change.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Longest base path first, so the first match is the most specific.
    apis: Vec<PublishedApi>,
    consumers: HashMap<String, BTreeSet<String>>,
    /// JWT subjects, by the consumer they are (`ApiConsumer.jwtSubjects`).
    subjects: HashMap<String, String>,
    keys: Vec<Key>,
}

/// One `Api` as published.
#[derive(Debug)]
pub(crate) struct PublishedApi {
    pub(crate) name: String,
    pub(crate) spec: ApiSpec,
}

#[derive(Debug)]
struct Key {
    sha256: [u8; 32],
    consumer: String,
    spec: ApiKeySpec,
}

impl Catalog {
    /// Compiles the `Api`, `ApiConsumer` and `ApiKey` resources of `snapshot`. A resource
    /// that does not read (written by a newer server) is skipped with a warning.
    pub fn compile(snapshot: &Snapshot) -> Catalog {
        let mut catalog = Catalog::default();
        for r in snapshot.resources.values() {
            match r.kind.as_str() {
                "Api" => match serde_json::from_value::<ApiSpec>(r.spec.clone()) {
                    Ok(spec) => {
                        let unenforced = unenforced(&spec);
                        if !unenforced.is_empty() {
                            tracing::warn!(api = %r.name, fields = %unenforced.join(", "), "this gateway does not enforce these fields of the Api yet (docs/gateway.md)");
                        }
                        catalog.apis.push(PublishedApi {
                            name: r.name.clone(),
                            spec,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(api = %r.name, error = %e, "skipping an Api this gateway cannot read")
                    }
                },
                "ApiConsumer" => {
                    let apis = r.spec["apis"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    catalog.consumers.insert(r.name.clone(), apis);
                    for sub in r.spec["jwtSubjects"].as_array().into_iter().flatten() {
                        if let Some(sub) = sub.as_str() {
                            catalog.subjects.insert(sub.to_owned(), r.name.clone());
                        }
                    }
                }
                "ApiKey" => {
                    let spec = serde_json::from_value::<ApiKeySpec>(r.spec.clone()).ok();
                    match spec.and_then(|s| Some((from_hex(&s.sha256)?, s))) {
                        Some((sha256, spec)) => catalog.keys.push(Key {
                            sha256,
                            consumer: spec.consumer.clone(),
                            spec,
                        }),
                        None => {
                            tracing::warn!(key = %r.name, "skipping an ApiKey this gateway cannot read")
                        }
                    }
                }
                _ => {}
            }
        }
        catalog
            .apis
            .sort_by_key(|a| std::cmp::Reverse(a.spec.base_path.len()));
        catalog
    }

    /// The names of the APIs published, most specific base path first.
    pub fn api_names(&self) -> Vec<&str> {
        self.apis.iter().map(|a| a.name.as_str()).collect()
    }

    /// The API a request for `host` (without port) and `path` is for, and the path below
    /// its base path (starting with `/`).
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<(&PublishedApi, String)> {
        self.apis.iter().find_map(|api| {
            if !api.spec.hostnames.is_empty()
                && !host.is_some_and(|h| api.spec.hostnames.iter().any(|p| host_matches(p, h)))
            {
                return None;
            }
            below(&api.spec.base_path, path).map(|rest| (api, rest))
        })
    }

    /// The consumer holding API key `key` at `now` (an expired key holds none): its
    /// SHA-256 is compared with every known key's in constant time, whatever matches first.
    pub(crate) fn consumer_of_key(&self, key: &str, now: Timestamp) -> Option<&str> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut found = None;
        for k in &self.keys {
            if ieum_model::secret::same(&k.sha256, digest.as_ref()) {
                found = Some(k);
            }
        }
        found
            .filter(|k| k.spec.valid_at(now))
            .map(|k| k.consumer.as_str())
    }

    /// The consumer a JWT subject is.
    pub(crate) fn consumer_of_subject(&self, sub: &str) -> Option<&str> {
        self.subjects.get(sub).map(String::as_str)
    }

    /// Whether `consumer` is granted `api` (an `ApiConsumer` listing it).
    pub(crate) fn may_use(&self, consumer: &str, api: &str) -> bool {
        self.consumers
            .get(consumer)
            .is_some_and(|apis| apis.contains(api))
    }
}

/// The fields of `spec` this gateway accepts but does not act on yet.
fn unenforced(spec: &ApiSpec) -> Vec<&'static str> {
    [
        ("timeouts", spec.timeouts.is_some()),
        ("retry", spec.retry.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, set)| set.then_some(field))
    .collect()
}

/// `path` below `base` (`/shop` holds `/shop` and `/shop/…`, not `/shopping`), as a path
/// starting with `/`.
fn below(base: &str, path: &str) -> Option<String> {
    if base == "/" {
        return Some(path.to_owned());
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/".to_owned())
    } else if rest.starts_with('/') {
        Some(rest.to_owned())
    } else {
        None
    }
}

/// Whether `host` is `pattern`, or one label followed by `pattern`'s suffix for `*.…`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(resources: &[(&str, &str, serde_json::Value)]) -> Snapshot {
        Snapshot::of_resources(resources)
    }

    fn api(base: &str, hosts: &[&str]) -> serde_json::Value {
        serde_json::json!({"basePath": base, "hostnames": hosts, "backend": {"service": "orders"}, "auth": {"anonymous": true}})
    }

    #[test]
    fn the_longest_base_path_of_a_matching_host_wins() {
        let c = Catalog::compile(&snapshot(&[
            ("Api", "root", api("/", &[])),
            ("Api", "shop", api("/shop", &[])),
            (
                "Api",
                "shop-v2",
                api("/shop/v2", &["api.shop.example", "*.eu.shop.example"]),
            ),
        ]));
        let name = |host: Option<&str>, path: &str| {
            c.find(host, path)
                .map(|(a, rest)| format!("{} {rest}", a.name))
        };
        assert_eq!(
            name(None, "/shop/orders/7").as_deref(),
            Some("shop /orders/7")
        );
        assert_eq!(name(None, "/shop").as_deref(), Some("shop /"));
        assert_eq!(name(None, "/shopping").as_deref(), Some("root /shopping"));
        assert_eq!(
            name(Some("api.shop.example"), "/shop/v2/x").as_deref(),
            Some("shop-v2 /x")
        );
        assert_eq!(
            name(Some("fr.eu.shop.example"), "/shop/v2/x").as_deref(),
            Some("shop-v2 /x")
        );
        // Another host falls back to a less specific API without host names.
        assert_eq!(
            name(Some("other.example"), "/shop/v2/x").as_deref(),
            Some("shop /v2/x")
        );
        assert_eq!(
            name(Some("eu.shop.example"), "/shop/v2/x").as_deref(),
            Some("shop /v2/x")
        );
    }

    #[test]
    fn keys_find_their_consumer_and_consumers_their_apis() {
        let key = "ieumk_secret";
        let hex: String = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let c = Catalog::compile(&snapshot(&[
            (
                "ApiKey",
                "mobile-1",
                serde_json::json!({"consumer": "mobile", "sha256": hex, "prefix": "secret"}),
            ),
            (
                "ApiKey",
                "broken",
                serde_json::json!({"consumer": "x", "sha256": "zz", "prefix": "zz"}),
            ),
            (
                "ApiConsumer",
                "mobile",
                serde_json::json!({"apis": ["shop"]}),
            ),
        ]));
        let now = Timestamp::from_system(std::time::SystemTime::now());
        assert_eq!(c.consumer_of_key(key, now), Some("mobile"));
        assert_eq!(c.consumer_of_key("ieumk_other", now), None);
        // A key past its expiry holds no consumer.
        let expired = Catalog::compile(&snapshot(&[(
            "ApiKey",
            "mobile-2",
            serde_json::json!({"consumer": "mobile", "sha256": hex, "prefix": "secret",
                "expiresAt": "2020-01-01T00:00:00Z"}),
        )]));
        assert_eq!(expired.consumer_of_key(key, now), None);
        assert!(c.may_use("mobile", "shop"));
        assert!(!c.may_use("mobile", "admin"));
        assert!(!c.may_use("nobody", "shop"));
    }
}
