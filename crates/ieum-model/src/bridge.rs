//! The sidecar bridge's resources: `PubSub` (a broker connection), `Subscription` (a topic
//! delivered into an app route) and `Binding` (a queue or topic of a system outside the
//! mesh, read into an app route or written from one).
//!
//! A `PubSub` names a broker and how to reach it; `Subscription`s and `Binding`s refer to
//! it by name, so a broker's address and credentials are written once. Secrets are never
//! written in a resource: `credentials.fromEnv` names an environment variable that only
//! the process using the broker (the sidecar) reads, and a password inside `url` is
//! rejected.
//!
//! Validation codes: `E300x` `PubSub`, `E301x` `Subscription`, `E302x` `Binding`; topics
//! are checked by [`validate_topic`] (`E3010`) wherever they appear.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::Retry;
use crate::{Duration, Name, Validator};

/// Longest topic name: Kafka's limit, the strictest of the brokers.
pub const MAX_TOPIC_LEN: usize = 249;
/// Most deliveries of one subscription in flight at once.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Default for [`SubscriptionSpec::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 32;
/// Default for [`PubSubSpec::redeliver_after`].
pub const DEFAULT_REDELIVER_AFTER: Duration = Duration::from_secs(30);

/// The spec of a `PubSub`: one broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PubSubSpec {
    /// The broker's kind.
    #[serde(rename = "type")]
    pub kind: BrokerType,
    /// Where the broker listens (`nats://host:4222`, `amqp://user@host:5672/vhost`,
    /// `mqtt://host:1883`, `redis://host:6379/0`, `kafka://host:9092` or Kafka's own
    /// `host1:9092,host2:9092`). Not used by
    /// `memory`. Never holds a password: use `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The secret to connect with, read from the sidecar's environment at connect time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// How events are laid out on the broker.
    #[serde(default)]
    pub cloud_events: CloudEventsFormat,
    /// Create missing streams, exchanges, queues and consumer groups on first use. Turn off
    /// where an operator owns the broker's topology; a missing one is then an error.
    #[serde(default = "yes")]
    pub auto_create: bool,
    /// How long a delivery may stay unacknowledged before the broker gives it to another
    /// consumer (JetStream `ack_wait`, Redis Streams' claim idle time). Brokers that notice
    /// a lost consumer by its connection (RabbitMQ, MQTT) redeliver sooner.
    #[serde(default = "default_redeliver_after")]
    pub redeliver_after: Duration,
    /// Broker-specific options; each type lists the keys it knows (see the bridge docs),
    /// and an unknown key is an error, so typos do not go unnoticed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// How the broker's TLS certificate is checked. TLS itself is chosen by the URL's
    /// scheme (`tls://`, `amqps://`, `mqtts://`/`ssl://`, `rediss://`); this only says
    /// which CAs to trust and which name to expect, so it needs such a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PubSubTls>,
}

/// How a broker's TLS certificate is verified. There is deliberately no way to turn the
/// check off: a broker with a self-signed or private-CA certificate is trusted by naming
/// that CA in `caFile`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PubSubTls {
    /// A PEM file, on the host of the process that connects (the sidecar), holding the CA
    /// certificate(s) that sign the broker's certificate. Only these CAs are trusted then;
    /// without it, the platform's trusted roots are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name the broker's certificate must carry, when it is not the URL's host (a
    /// broker reached by IP address or through a tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_redeliver_after() -> Duration {
    DEFAULT_REDELIVER_AFTER
}

/// The kinds of broker the bridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum BrokerType {
    /// NATS with JetStream (persistent streams, durable consumers).
    #[serde(rename = "nats-jetstream")]
    NatsJetStream,
    /// RabbitMQ over AMQP 0-9-1.
    #[serde(rename = "rabbitmq")]
    RabbitMq,
    /// An MQTT 5 broker (QoS 1).
    #[serde(rename = "mqtt")]
    Mqtt,
    /// Redis Streams with consumer groups.
    #[serde(rename = "redis-streams")]
    RedisStreams,
    /// Apache Kafka or a compatible broker.
    #[serde(rename = "kafka")]
    Kafka,
    /// Hosted by `ieum server` for the sidecars that follow it (in-process for the server
    /// itself and tests): local development only, nothing survives a restart.
    #[serde(rename = "memory")]
    Memory,
}

impl BrokerType {
    /// The name as written in `type:`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerType::NatsJetStream => "nats-jetstream",
            BrokerType::RabbitMq => "rabbitmq",
            BrokerType::Mqtt => "mqtt",
            BrokerType::RedisStreams => "redis-streams",
            BrokerType::Kafka => "kafka",
            BrokerType::Memory => "memory",
        }
    }

    /// URL schemes this broker accepts.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            BrokerType::NatsJetStream => &["nats", "tls"],
            BrokerType::RabbitMq => &["amqp", "amqps"],
            BrokerType::Mqtt => &["mqtt", "mqtts", "tcp", "ssl"],
            BrokerType::RedisStreams => &["redis", "rediss"],
            BrokerType::Kafka => &["kafka"],
            BrokerType::Memory => &[],
        }
    }

    /// The URL schemes of [`schemes`](Self::schemes) that connect with TLS.
    pub fn tls_schemes(self) -> &'static [&'static str] {
        match self {
            BrokerType::NatsJetStream => &["tls"],
            BrokerType::RabbitMq => &["amqps"],
            BrokerType::Mqtt => &["mqtts", "ssl"],
            BrokerType::RedisStreams => &["rediss"],
            BrokerType::Kafka | BrokerType::Memory => &[],
        }
    }

    /// `metadata` keys this broker knows.
    pub fn metadata_keys(self) -> &'static [&'static str] {
        match self {
            BrokerType::NatsJetStream => &["streamPrefix"],
            BrokerType::RabbitMq => &["queueType"],
            BrokerType::Mqtt => &["clientIdPrefix"],
            BrokerType::RedisStreams => &["keyPrefix"],
            BrokerType::Kafka => &["partitions", "replicationFactor"],
            BrokerType::Memory => &[],
        }
    }
}

/// A secret taken from the environment of the process that connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// The user name, when the broker wants one (RabbitMQ, MQTT, Redis ACL users). Without
    /// it the secret is a token (NATS) or a password alone (Redis `AUTH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The environment variable holding the password or token.
    pub from_env: String,
}

/// Binary or structured CloudEvents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudEventsFormat {
    /// The content mode.
    #[serde(default)]
    pub mode: ContentMode,
}

/// The CloudEvents content modes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ContentMode {
    /// Attributes in the protocol's headers or properties, the payload as is: consumers
    /// that do not know CloudEvents still read the data.
    #[default]
    Binary,
    /// The whole event as one JSON document (`application/cloudevents+json`).
    Structured,
}

impl PubSubSpec {
    /// Whether the URL's scheme asks for TLS (`tls://`, `amqps://`, `mqtts://`, `ssl://`,
    /// `rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url
            .as_deref()
            .and_then(|url| url.split_once("://"))
            .is_some_and(|(scheme, _)| self.kind.tls_schemes().contains(&scheme))
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        match (&self.url, self.kind) {
            (Some(_), BrokerType::Memory) => {
                v.error("E3001", "url", "a `memory` broker has no url: remove it")
            }
            (None, BrokerType::Memory) => {}
            (None, kind) => v.error(
                "E3001",
                "url",
                format!(
                    "is required for `{}`: write {}://HOST:PORT",
                    kind.as_str(),
                    kind.schemes()[0]
                ),
            ),
            (Some(url), kind) => check_url(url, kind, v),
        }
        if let Some(c) = &self.credentials {
            v.nested("credentials", |v| {
                v.check(is_env_name(&c.from_env), "E3003", "fromEnv", || {
                    format!(
                        "`{}` is not an environment variable name: use letters, digits and `_`, not starting with a digit",
                        c.from_env
                    )
                });
                if let Some(user) = &c.username {
                    v.check(
                        !user.is_empty() && user.len() <= 256 && !user.chars().any(char::is_control),
                        "E3003",
                        "username",
                        || "must be 1–256 printable characters".into(),
                    );
                }
            });
            v.check(
                self.kind != BrokerType::Memory,
                "E3003",
                "credentials",
                || "a `memory` broker takes no credentials: remove them".into(),
            );
        }
        v.check(
            self.redeliver_after >= Duration::from_secs(1)
                && self.redeliver_after <= Duration::from_secs(3600),
            "E3005",
            "redeliverAfter",
            || format!("must be between 1s and 1h (is {})", self.redeliver_after),
        );
        let known = self.kind.metadata_keys();
        for (key, value) in &self.metadata {
            let field = format!("metadata.{key}");
            if !known.contains(&key.as_str()) {
                v.error(
                    "E3004",
                    &field,
                    if known.is_empty() {
                        format!("`{}` takes no metadata", self.kind.as_str())
                    } else {
                        format!(
                            "`{key}` is not an option of `{}`: use {}",
                            self.kind.as_str(),
                            known.join(", ")
                        )
                    },
                );
                continue;
            }
            let ok = match key.as_str() {
                "queueType" => matches!(value.as_str(), "quorum" | "classic"),
                "partitions" => is_count(value, MAX_KAFKA_PARTITIONS),
                "replicationFactor" => is_count(value, MAX_KAFKA_REPLICATION),
                _ => is_prefix(value),
            };
            v.check(ok, "E3004", &field, || match key.as_str() {
                "queueType" => format!("`{value}` is not a queue type: use quorum or classic"),
                "partitions" => format!(
                    "`{value}` is not a partition count: write a whole number from 1 to {MAX_KAFKA_PARTITIONS}, as a string (\"3\")"
                ),
                "replicationFactor" => format!(
                    "`{value}` is not a replication factor: write a whole number from 1 to {MAX_KAFKA_REPLICATION}, as a string (\"3\")"
                ),
                _ => format!("`{value}` is not a prefix: 1–64 letters, digits, `-` or `_`"),
            });
        }
        if let Some(tls) = &self.tls {
            self.check_tls(tls, v);
        }
        if let Some(url) = &self.url
            && self.kind == BrokerType::RedisStreams
            && url
                .split_once('#')
                .is_some_and(|(_, fragment)| fragment.contains("insecure"))
        {
            v.error(
                "E3006",
                "url",
                "`#insecure` would skip the certificate check, which ieum does not allow: remove it, and trust a private CA with `tls: {caFile: PATH}`",
            );
        }
    }

    fn check_tls(&self, tls: &PubSubTls, v: &mut Validator) {
        let tls_schemes = self.kind.tls_schemes();
        if tls_schemes.is_empty() {
            v.error(
                "E3006",
                "tls",
                format!("`{}` takes no tls: remove it", self.kind.as_str()),
            );
        } else if self.url.is_some() && !self.uses_tls() {
            let scheme = self
                .url
                .as_deref()
                .and_then(|u| u.split_once("://"))
                .map_or("", |(scheme, _)| scheme);
            v.error(
                "E3006",
                "tls",
                format!(
                    "applies to TLS connections only, and `{scheme}://` is plain TCP: write the url as {}, or remove `tls`",
                    tls_schemes
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            );
        }
        v.nested("tls", |v| {
            if let Some(path) = &tls.ca_file {
                v.check(
                    !path.trim().is_empty() && !path.chars().any(char::is_control),
                    "E3006",
                    "caFile",
                    || {
                        "is empty: give the path of a PEM file with the CA certificate(s) that sign the broker's certificate, or remove caFile to trust the platform's roots".into()
                    },
                );
            }
            if let Some(name) = &tls.server_name {
                v.check(is_server_name(name), "E3006", "serverName", || {
                    format!(
                        "`{name}` is not a DNS name or IP address: write the name in the broker's certificate, like `broker.internal`"
                    )
                });
            }
        });
    }
}

/// A DNS name (letters, digits, `-`, dot-separated labels of 1–63, at most 253 in all) or
/// an IP address: what a certificate can name.
fn is_server_name(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn check_url(url: &str, kind: BrokerType, v: &mut Validator) {
    if kind == BrokerType::Kafka && !url.contains("://") {
        // Kafka's own form: a bootstrap list `host:port,host:port`.
        check_kafka_hosts(url, url, v);
        return;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        v.error(
            "E3001",
            "url",
            format!(
                "`{url}` is not a URL: write {}://HOST:PORT",
                kind.schemes()[0]
            ),
        );
        return;
    };
    if !kind.schemes().contains(&scheme) {
        v.error(
            "E3001",
            "url",
            format!(
                "`{scheme}://` is not a scheme of `{}`: use {}",
                kind.as_str(),
                kind.schemes()
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            v.check(!userinfo.contains(':'), "E3002", "url", || {
                "holds a password: remove it and reference an environment variable with `credentials: {fromEnv: VAR}`".into()
            });
            host
        }
        None => authority,
    };
    if kind == BrokerType::Kafka {
        check_kafka_hosts(url, host, v);
        return;
    }
    v.check(
        !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c.is_control()),
        "E3001",
        "url",
        || format!("`{url}` names no host"),
    );
}

/// A Kafka bootstrap list: `host[:port]` entries separated by commas, none empty.
fn check_kafka_hosts(url: &str, hosts: &str, v: &mut Validator) {
    v.check(
        hosts.split(',').all(|h| {
            !h.is_empty()
                && !h.starts_with(':')
                && !h
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '@')
        }),
        "E3001",
        "url",
        || {
            format!(
                "`{url}` is not a list of brokers: write kafka://HOST:PORT or HOST:PORT,HOST:PORT"
            )
        },
    );
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Most partitions of a topic the bridge creates (`metadata.partitions`).
const MAX_KAFKA_PARTITIONS: u32 = 10_000;
/// Highest replication factor of a topic the bridge creates (`metadata.replicationFactor`).
const MAX_KAFKA_REPLICATION: u32 = 32;

/// A whole number from 1 to `max`, digits only.
fn is_count(s: &str, max: u32) -> bool {
    s.chars().all(|c| c.is_ascii_digit()) && s.parse::<u32>().is_ok_and(|n| (1..=max).contains(&n))
}

fn is_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Checks a topic name: 1–249 of `A–Z a–z 0–9 . _ -`, with no empty `.`-separated part.
///
/// That is what every broker accepts as is: a NATS subject (`.` separates tokens, so no
/// empty token and no wildcards), a RabbitMQ exchange, an MQTT topic (no `+`/`#`), a Redis
/// key and a Kafka topic. The bridge checks topics from the app against the same rule.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "must be 1–{MAX_TOPIC_LEN} characters (is {})",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{topic}` has `{}`: use letters, digits, `.`, `_` and `-`",
            c.escape_default()
        ));
    }
    if topic.split('.').any(str::is_empty) {
        return Err(format!(
            "`{topic}` has an empty part between dots: write `orders.created`, not `orders..created`"
        ));
    }
    Ok(())
}

fn check_topic(v: &mut Validator, field: &str, topic: &str) {
    if let Err(message) = validate_topic(topic) {
        v.error("E3010", field, message);
    }
}

fn is_attribute_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The spec of a `Subscription`: events of a topic delivered to a service's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The `PubSub` to read from.
    #[schema(value_type = String)]
    pub pubsub: Name,
    /// The topic.
    pub topic: String,
    /// The service whose instances receive the events, each event by one instance.
    #[schema(value_type = String)]
    pub service: Name,
    /// The consumer group; defaults to the service, so its instances share the work.
    /// Two subscriptions of one topic with different groups each get every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub group: Option<Name>,
    /// The app's path events are POSTed to.
    pub route: String,
    /// Where an event goes after its last retry, or when the app answers `DROP`. Without
    /// it such an event is discarded (and recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Redeliveries of an event the app failed (`codes` are the app's answers worth
    /// another try; `attempts` counts retries after the first delivery).
    #[serde(default)]
    pub retry: Retry,
    /// Deliveries to the app at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// The CloudEvents attribute whose value orders delivery: events with the same value
    /// are delivered one at a time, in order; different values concurrently.
    #[serde(default = "default_ordering_key")]
    pub ordering_key: String,
    /// How the app receives events: binary (attributes as `ce-` headers, the data as the
    /// body) or structured (one `application/cloudevents+json` body).
    #[serde(default)]
    pub cloud_events: CloudEventsFormat,
}

fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}

fn default_ordering_key() -> String {
    "partitionkey".to_owned()
}

impl SubscriptionSpec {
    /// The consumer group in effect.
    pub fn effective_group(&self) -> &Name {
        self.group.as_ref().unwrap_or(&self.service)
    }

    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        check_topic(v, "topic", &self.topic);
        check_route(v, &self.route);
        if let Some(dlt) = &self.dead_letter_topic {
            check_topic(v, "deadLetterTopic", dlt);
            v.check(*dlt != self.topic, "E3014", "deadLetterTopic", || {
                "must differ from `topic`, or failed events would come back forever".into()
            });
        }
        v.nested("retry", |v| self.retry.validate(v));
        check_in_flight(v, self.max_in_flight);
        v.check(
            is_attribute_name(&self.ordering_key) && self.ordering_key.len() <= 64,
            "E3015",
            "orderingKey",
            || {
                format!(
                    "`{}` is not a CloudEvents attribute name: use lowercase letters and digits, like `partitionkey` or `subject`",
                    self.ordering_key
                )
            },
        );
    }
}

fn check_route(v: &mut Validator, route: &str) {
    v.check(
        route.starts_with('/') && !route.chars().any(|c| c.is_whitespace() || c.is_control()),
        "E3012",
        "route",
        || format!("`{route}` is not a path: start it with `/`, without spaces"),
    );
}

fn check_in_flight(v: &mut Validator, n: u32) {
    v.check(
        (1..=MAX_IN_FLIGHT).contains(&n),
        "E3013",
        "maxInFlight",
        || format!("must be between 1 and {MAX_IN_FLIGHT} (is {n})"),
    );
}

/// The spec of a `Binding`: a queue, topic or subject of a system outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingSpec {
    /// The `PubSub` (broker connection) to use.
    #[schema(value_type = String)]
    pub pubsub: Name,
    /// `input` delivers what arrives on `topic` to `service`'s `route`; `output` lets apps
    /// send to `topic` with `POST /v1/bindings/{name}`.
    pub direction: BindingDirection,
    /// The queue, topic or subject on the broker.
    pub topic: String,
    /// Input: the service that receives. Output: the only service allowed to send;
    /// without it, any service may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub service: Option<Name>,
    /// Input only: the app's path messages are POSTed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// `raw` (the default) sends and receives payloads as they are, for systems that do
    /// not speak CloudEvents; `cloudEvents` wraps them as the `PubSub` says.
    #[serde(default)]
    pub format: BindingFormat,
    /// Input only: redeliveries of a message the app failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Input only: where a message goes after its last retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Input only: deliveries to the app at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// Which way a binding carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BindingDirection {
    /// From the broker into an app.
    Input,
    /// From an app to the broker.
    Output,
}

/// The payload format of a binding.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum BindingFormat {
    /// Payloads as they are.
    #[default]
    Raw,
    /// CloudEvents, in the `PubSub`'s content mode.
    CloudEvents,
}

impl BindingSpec {
    /// Checks every field; paths are relative to `v`'s prefix.
    pub fn validate(&self, v: &mut Validator) {
        check_topic(v, "topic", &self.topic);
        match self.direction {
            BindingDirection::Input => {
                v.check(self.service.is_some(), "E3021", "service", || {
                    "an input binding needs the service that receives its messages".into()
                });
                match &self.route {
                    Some(route) => check_route(v, route),
                    None => v.error(
                        "E3021",
                        "route",
                        "an input binding needs the app path messages are POSTed to",
                    ),
                }
                if let Some(retry) = &self.retry {
                    v.nested("retry", |v| retry.validate(v));
                }
                if let Some(dlt) = &self.dead_letter_topic {
                    check_topic(v, "deadLetterTopic", dlt);
                    v.check(*dlt != self.topic, "E3014", "deadLetterTopic", || {
                        "must differ from `topic`".into()
                    });
                }
                if let Some(n) = self.max_in_flight {
                    check_in_flight(v, n);
                }
            }
            BindingDirection::Output => {
                for (set, field) in [
                    (self.route.is_some(), "route"),
                    (self.retry.is_some(), "retry"),
                    (self.dead_letter_topic.is_some(), "deadLetterTopic"),
                    (self.max_in_flight.is_some(), "maxInFlight"),
                ] {
                    v.check(!set, "E3022", field, || {
                        "applies to input bindings only: remove it or use `direction: input`".into()
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(spec: &impl Fn(&mut Validator)) -> Vec<String> {
        let mut v = Validator::new("spec");
        spec(&mut v);
        v.finish()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.code, e.field))
            .collect()
    }

    fn pubsub(yaml: &str) -> PubSubSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn pubsub_defaults_are_written_out() {
        let spec = pubsub("type: nats-jetstream\nurl: nats://127.0.0.1:4222\n");
        assert!(errors_of(&|v| spec.validate(v)).is_empty());
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["cloudEvents"]["mode"], "binary");
        assert_eq!(json["autoCreate"], true);
        assert_eq!(json["redeliverAfter"], "30s");
    }

    #[test]
    fn pubsub_errors_point_at_fields() {
        let spec = pubsub(
            "type: rabbitmq\nurl: nats://guest:secret@host\ncredentials: {fromEnv: 1BAD}\nredeliverAfter: 2h\nmetadata: {queueType: lazy, exchange: x}\n",
        );
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            [
                "E3001 spec.url",
                "E3002 spec.url",
                "E3003 spec.credentials.fromEnv",
                "E3005 spec.redeliverAfter",
                "E3004 spec.metadata.exchange",
                "E3004 spec.metadata.queueType",
            ]
        );
        let spec = pubsub("type: redis-streams\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3001 spec.url"]);
        let spec = pubsub("type: memory\nurl: redis://x\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3001 spec.url"]);
        // A user name without a password is fine in the URL.
        let spec = pubsub(
            "type: rabbitmq\nurl: amqp://guest@127.0.0.1:5672/%2f\ncredentials: {username: guest, fromEnv: AMQP_PASSWORD}\n",
        );
        assert!(errors_of(&|v| spec.validate(v)).is_empty());
    }

    #[test]
    fn pubsub_tls_needs_a_tls_url_and_a_ca_path() {
        for (url, kind) in [
            ("tls://127.0.0.1:4222", "nats-jetstream"),
            ("amqps://guest@broker:5671/%2f", "rabbitmq"),
            ("mqtts://broker:8883", "mqtt"),
            ("ssl://broker:8883", "mqtt"),
            ("rediss://broker:6380/0", "redis-streams"),
        ] {
            let spec = pubsub(&format!(
                "type: {kind}\nurl: {url}\ntls: {{caFile: /etc/ieum/ca.pem, serverName: broker.internal}}\n"
            ));
            assert!(errors_of(&|v| spec.validate(v)).is_empty(), "{url}");
            assert!(spec.uses_tls(), "{url}");
            let json = serde_json::to_value(&spec).unwrap();
            assert_eq!(json["tls"]["caFile"], "/etc/ieum/ca.pem");
            assert_eq!(json["tls"]["serverName"], "broker.internal");
        }
        // TLS by the scheme alone, trusting the platform's roots.
        let spec = pubsub("type: rabbitmq\nurl: amqps://broker\n");
        assert!(spec.uses_tls());
        assert!(errors_of(&|v| spec.validate(v)).is_empty());
        let spec = pubsub("type: mqtt\nurl: mqtt://broker:1883\n");
        assert!(!spec.uses_tls());

        let spec = pubsub("type: rabbitmq\nurl: amqp://broker:5672\ntls: {caFile: /ca.pem}\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3006 spec.tls"]);
        let mut v = Validator::new("spec");
        spec.validate(&mut v);
        let message = v.finish().unwrap_err()[0].to_string();
        assert!(message.contains("amqps://"), "{message}");
        let spec = pubsub("type: nats-jetstream\nurl: nats://broker:4222\ntls: {}\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3006 spec.tls"]);
        let spec = pubsub(
            "type: redis-streams\nurl: rediss://broker\ntls: {caFile: '', serverName: 'not a name'}\n",
        );
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            ["E3006 spec.tls.caFile", "E3006 spec.tls.serverName"]
        );
        let spec = pubsub("type: memory\ntls: {caFile: /ca.pem}\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3006 spec.tls"]);
        // Redis' own switch for skipping the certificate check is refused.
        let spec = pubsub("type: redis-streams\nurl: 'rediss://broker:6380/#insecure'\n");
        assert_eq!(errors_of(&|v| spec.validate(v)), ["E3006 spec.url"]);
        // No skip-verify option: an unknown field is refused by the parser.
        assert!(
            serde_yaml_ng::from_str::<PubSubSpec>(
                "type: rabbitmq\nurl: amqps://broker\ntls: {insecureSkipVerify: true}\n"
            )
            .is_err()
        );
        for ok in [
            "localhost",
            "broker.internal",
            "127.0.0.1",
            "::1",
            "a-b.example.com.",
        ] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in ["", "a b", "-a.example", "a..b", &"x".repeat(64)] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }

    #[test]
    fn kafka_takes_a_bootstrap_list_and_topic_options() {
        for url in [
            "kafka://127.0.0.1:9092",
            "kafka://a:9092,b:9092",
            "127.0.0.1:9092",
            "a:9092,b:9092,c",
        ] {
            let spec = pubsub(&format!(
                "type: kafka\nurl: '{url}'\nmetadata: {{partitions: '6', replicationFactor: '3'}}\n"
            ));
            assert!(errors_of(&|v| spec.validate(v)).is_empty(), "{url}");
        }
        for url in [
            "a:9092,,b:9092",
            "a b:9092",
            "kafka://",
            "kafka://u:p@a:9092",
            "nats://a:4222",
        ] {
            let spec = pubsub(&format!("type: kafka\nurl: '{url}'\n"));
            assert!(
                errors_of(&|v| spec.validate(v)).contains(&"E3001 spec.url".to_owned())
                    || errors_of(&|v| spec.validate(v)).contains(&"E3002 spec.url".to_owned()),
                "{url}"
            );
        }
        let spec = pubsub(
            "type: kafka\nurl: a:9092\nmetadata: {partitions: '0', replicationFactor: x, keyPrefix: p}\n",
        );
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            [
                "E3004 spec.metadata.keyPrefix",
                "E3004 spec.metadata.partitions",
                "E3004 spec.metadata.replicationFactor",
            ]
        );
    }

    #[test]
    fn topics_fit_every_broker() {
        for ok in ["orders", "orders.created", "a-b_c.D9"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "orders..x",
            ".orders",
            "orders.",
            "a b",
            "a/b",
            "orders.*",
            "a>",
            &"x".repeat(250),
        ] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subscription_checks_topics_routes_and_limits() {
        let spec: SubscriptionSpec = serde_yaml_ng::from_str(
            "pubsub: bus\ntopic: orders\nservice: billing\nroute: events\ndeadLetterTopic: orders\nretry: {attempts: 11}\nmaxInFlight: 0\norderingKey: Subject\n",
        )
        .unwrap();
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            [
                "E3012 spec.route",
                "E3014 spec.deadLetterTopic",
                "E2104 spec.retry.attempts",
                "E3013 spec.maxInFlight",
                "E3015 spec.orderingKey",
            ]
        );
        let spec: SubscriptionSpec = serde_yaml_ng::from_str(
            "pubsub: bus\ntopic: orders\nservice: billing\nroute: /events\n",
        )
        .unwrap();
        assert!(errors_of(&|v| spec.validate(v)).is_empty());
        assert_eq!(spec.effective_group().as_str(), "billing");
        assert_eq!(spec.ordering_key, "partitionkey");
        assert_eq!(spec.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    }

    #[test]
    fn bindings_take_input_fields_only_for_input() {
        let spec: BindingSpec =
            serde_yaml_ng::from_str("pubsub: bus\ndirection: input\ntopic: invoices\n").unwrap();
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            ["E3021 spec.service", "E3021 spec.route"]
        );
        let spec: BindingSpec = serde_yaml_ng::from_str(
            "pubsub: bus\ndirection: output\ntopic: invoices\nroute: /x\nmaxInFlight: 3\n",
        )
        .unwrap();
        assert_eq!(
            errors_of(&|v| spec.validate(v)),
            ["E3022 spec.route", "E3022 spec.maxInFlight"]
        );
        let spec: BindingSpec = serde_yaml_ng::from_str(
            "pubsub: bus\ndirection: input\ntopic: invoices\nservice: billing\nroute: /invoices\nretry: {attempts: 3}\n",
        )
        .unwrap();
        assert!(errors_of(&|v| spec.validate(v)).is_empty());
        assert_eq!(spec.format, BindingFormat::Raw);
    }
}
