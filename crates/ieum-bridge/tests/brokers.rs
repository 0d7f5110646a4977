//! The Broker contract, run against every broker type: the in-memory one always, the real
//! ones when their URL is set (`IEUM_TEST_NATS_URL`, `IEUM_TEST_AMQP_URL`,
//! `IEUM_TEST_MQTT_URL`, `IEUM_TEST_REDIS_URL`, `IEUM_TEST_KAFKA_URL`; `.ci/run` sets them
//! all, and runs tansu for Kafka). Without a URL a test prints why it skipped and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ieum_bridge::cloudevents::{
    CORRELATION_ID, DEAD_LETTER_ATTEMPTS, DEAD_LETTER_REASON, DEAD_LETTER_TOPIC, PARTITION_KEY,
    TRACEPARENT,
};
use ieum_bridge::{Broker, BrokerError, CloudEvent, Delivery, SubscribeOptions, Subscription};
use ieum_model::bridge::{BrokerType, ContentMode, PubSubSpec};

const WAIT: Duration = Duration::from_secs(15);
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn spec(kind: BrokerType, url: Option<String>, mode: ContentMode) -> PubSubSpec {
    let mut yaml = format!("type: {}\nredeliverAfter: 1s\n", kind.as_str());
    if let Some(url) = url {
        yaml.push_str(&format!("url: {url}\n"));
    }
    let mut spec: PubSubSpec = serde_yaml_ng::from_str(&yaml).unwrap();
    spec.cloud_events.mode = mode;
    spec
}

fn env_var(kind: BrokerType) -> Option<&'static str> {
    match kind {
        BrokerType::NatsJetStream => Some("IEUM_TEST_NATS_URL"),
        BrokerType::RabbitMq => Some("IEUM_TEST_AMQP_URL"),
        BrokerType::Mqtt => Some("IEUM_TEST_MQTT_URL"),
        BrokerType::RedisStreams => Some("IEUM_TEST_REDIS_URL"),
        BrokerType::Kafka => Some("IEUM_TEST_KAFKA_URL"),
        BrokerType::Memory => None,
    }
}

/// The broker under test, or `None` (with a note) when its URL is not set.
async fn broker(kind: BrokerType, mode: ContentMode) -> Option<Arc<dyn Broker>> {
    let url = match env_var(kind) {
        Some(var) => match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                eprintln!("skipped for {}: set {var} to run it", kind.as_str());
                return None;
            }
        },
        None => None,
    };
    let name = format!("test-{}", ieum_bridge::cloudevents::new_id());
    Some(
        ieum_bridge::connect(&name, &spec(kind, url, mode))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kind.as_str())),
    )
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &ieum_bridge::cloudevents::new_id()[..8])
}

fn event(n: usize) -> CloudEvent {
    let mut e = CloudEvent::wrap(
        "orders",
        "com.example.order.created",
        Some("application/json"),
        Bytes::from(format!("{{\"n\":{n},\"note\":\"café\"}}")),
    );
    e.subject = Some(format!("order {n}"));
    e.extensions.insert(TRACEPARENT.into(), TRACE.into());
    e.extensions
        .insert(CORRELATION_ID.into(), "checkout-7".into());
    e
}

/// Options for the consumer `consumer` of this test run (consumer names are instance ids:
/// unique among the tests running at once).
fn options(consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        consumer: format!("{consumer}-{}", std::process::id()),
        max_in_flight: 16,
        dead_letter_topic: None,
        raw_source: None,
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery within 15s")
        .expect("the subscription is open")
}

async fn publish_delivers_with_attributes_and_trace(b: &dyn Broker) {
    let topic = unique("orders");
    let mut sub = b.subscribe(&topic, "billing", options("c1")).await.unwrap();
    let mut other = b.subscribe(&topic, "audit", options("c1")).await.unwrap();
    let sent = event(1);
    b.publish(&topic, &sent, None).await.unwrap();
    let got = next(&mut sub).await;
    assert_eq!(
        got.event, sent,
        "every attribute and the data arrive unchanged"
    );
    assert_eq!(got.event.extension(TRACEPARENT), Some(TRACE));
    assert_eq!(got.attempt, 1);
    assert_eq!(got.topic, topic);
    got.ack().await.unwrap();
    let audit = next(&mut other).await;
    assert_eq!(audit.event.id, sent.id, "every group gets every event");
    audit.ack().await.unwrap();
    // Acknowledged: nothing comes again.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next())
            .await
            .is_err()
    );
    sub.close().await;
    other.close().await;
}

async fn nack_redelivers_with_attempt_two(b: &dyn Broker) {
    let topic = unique("retry");
    let mut sub = b.subscribe(&topic, "billing", options("c1")).await.unwrap();
    let sent = event(2);
    b.publish(&topic, &sent, None).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    let start = tokio::time::Instant::now();
    first.nack(Duration::from_millis(300)).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.event.id, sent.id);
    assert_eq!(second.attempt, 2);
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "the retry delay was honoured ({:?})",
        start.elapsed()
    );
    second.ack().await.unwrap();
    sub.close().await;
}

async fn dead_letter_carries_reason_and_attempts(b: &dyn Broker) {
    let topic = unique("pay");
    let dlt = format!("{topic}-dead");
    let mut dead = b.subscribe(&dlt, "ops", options("c1")).await.unwrap();
    let mut opts = options("c1");
    opts.dead_letter_topic = Some(dlt.clone());
    let mut sub = b.subscribe(&topic, "billing", opts).await.unwrap();
    let sent = event(3);
    b.publish(&topic, &sent, Some("k1")).await.unwrap();
    let first = next(&mut sub).await;
    first.nack(Duration::from_millis(10)).await.unwrap();
    let second = next(&mut sub).await;
    assert_eq!(second.attempt, 2);
    second
        .dead_letter("app answered 500\nthree times")
        .await
        .unwrap();
    let got = next(&mut dead).await;
    assert_eq!(got.event.id, sent.id);
    assert_eq!(got.event.data, sent.data);
    assert_eq!(
        got.event.extension(DEAD_LETTER_REASON),
        Some("app answered 500 three times")
    );
    assert_eq!(got.event.extension(DEAD_LETTER_ATTEMPTS), Some("2"));
    assert_eq!(got.event.extension(DEAD_LETTER_TOPIC), Some(topic.as_str()));
    assert_eq!(got.event.extension(PARTITION_KEY), Some("k1"));
    assert_eq!(got.event.extension(TRACEPARENT), Some(TRACE));
    got.ack().await.unwrap();
    // Dead-lettered means settled on the original topic.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), sub.next())
            .await
            .is_err()
    );
    sub.close().await;
    dead.close().await;
}

async fn unacked_delivery_goes_to_the_next_consumer(b: &dyn Broker) {
    let topic = unique("crash");
    let mut sub = b
        .subscribe(&topic, "billing", options("i-1"))
        .await
        .unwrap();
    let sent = event(4);
    b.publish(&topic, &sent, None).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(first.attempt, 1);
    // The consumer dies mid-delivery: no ack, no nack.
    drop(first);
    drop(sub);
    let mut restarted = b
        .subscribe(&topic, "billing", options("i-1"))
        .await
        .unwrap();
    let again = next(&mut restarted).await;
    assert_eq!(again.event, sent);
    assert!(again.attempt >= 2, "attempt {}", again.attempt);
    again.ack().await.unwrap();
    restarted.close().await;
}

async fn ordering_key_keeps_per_key_order(b: &dyn Broker) {
    let topic = unique("ordered");
    let mut sub = b.subscribe(&topic, "billing", options("c1")).await.unwrap();
    for n in 0..20 {
        let key = if n % 2 == 0 { "even" } else { "odd" };
        b.publish(&topic, &event(n), Some(key)).await.unwrap();
    }
    let mut seen: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for _ in 0..20 {
        let d = next(&mut sub).await;
        let key = d.ordering_key(PARTITION_KEY).unwrap().to_owned();
        let n: serde_json::Value = serde_json::from_slice(d.event.data.as_ref().unwrap()).unwrap();
        seen.entry(key)
            .or_default()
            .push(n["n"].as_u64().unwrap() as usize);
        d.ack().await.unwrap();
    }
    assert_eq!(seen["even"], (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!(seen["odd"], (1..20).step_by(2).collect::<Vec<_>>());
    sub.close().await;
}

async fn invalid_input_is_refused_before_the_broker(b: &dyn Broker) {
    let err = b.publish("a b", &event(0), None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Topic { .. }), "{err}");
    let mut bad = event(0);
    bad.time = Some("yesterday".into());
    let err = b.publish("fine", &bad, None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Event(_)), "{err}");
    assert!(!err.is_retryable());
}

async fn contract(kind: BrokerType, mode: ContentMode) {
    let Some(b) = broker(kind, mode).await else {
        return;
    };
    assert_eq!(b.kind(), kind);
    publish_delivers_with_attributes_and_trace(&*b).await;
    nack_redelivers_with_attempt_two(&*b).await;
    dead_letter_carries_reason_and_attempts(&*b).await;
    unacked_delivery_goes_to_the_next_consumer(&*b).await;
    ordering_key_keeps_per_key_order(&*b).await;
    invalid_input_is_refused_before_the_broker(&*b).await;
    b.close().await;
}

async fn unreachable_is_a_clear_error(kind: BrokerType, url: &str) {
    let started = tokio::time::Instant::now();
    let err = match ieum_bridge::connect("down", &spec(kind, Some(url.into()), ContentMode::Binary))
        .await
    {
        Ok(_) => panic!("{}: connected to nothing", kind.as_str()),
        Err(e) => e,
    };
    assert!(
        matches!(&err, BrokerError::Unreachable { url: u, .. } if u == url),
        "{}: {err}",
        kind.as_str()
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("unreachable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn memory_binary() {
    contract(BrokerType::Memory, ContentMode::Binary).await;
}

#[tokio::test]
async fn memory_structured() {
    contract(BrokerType::Memory, ContentMode::Structured).await;
}

#[tokio::test]
async fn nats_binary() {
    contract(BrokerType::NatsJetStream, ContentMode::Binary).await;
}

#[tokio::test]
async fn nats_structured() {
    contract(BrokerType::NatsJetStream, ContentMode::Structured).await;
}

#[tokio::test]
async fn rabbitmq_binary() {
    contract(BrokerType::RabbitMq, ContentMode::Binary).await;
}

#[tokio::test]
async fn rabbitmq_structured() {
    contract(BrokerType::RabbitMq, ContentMode::Structured).await;
}

#[tokio::test]
async fn mqtt_binary() {
    contract(BrokerType::Mqtt, ContentMode::Binary).await;
}

#[tokio::test]
async fn mqtt_structured() {
    contract(BrokerType::Mqtt, ContentMode::Structured).await;
}

#[tokio::test]
async fn redis_binary() {
    contract(BrokerType::RedisStreams, ContentMode::Binary).await;
}

#[tokio::test]
async fn redis_structured() {
    contract(BrokerType::RedisStreams, ContentMode::Structured).await;
}

#[tokio::test]
async fn kafka_binary() {
    contract(BrokerType::Kafka, ContentMode::Binary).await;
}

#[tokio::test]
async fn kafka_structured() {
    contract(BrokerType::Kafka, ContentMode::Structured).await;
}

#[tokio::test]
async fn unreachable_brokers_fail_to_connect_with_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    unreachable_is_a_clear_error(BrokerType::NatsJetStream, "nats://127.0.0.1:9").await;
    unreachable_is_a_clear_error(BrokerType::RabbitMq, "amqp://127.0.0.1:9/%2f").await;
    unreachable_is_a_clear_error(BrokerType::Mqtt, "mqtt://127.0.0.1:9").await;
    unreachable_is_a_clear_error(BrokerType::RedisStreams, "redis://127.0.0.1:9").await;
    unreachable_is_a_clear_error(BrokerType::Kafka, "kafka://127.0.0.1:9").await;
    unreachable_is_a_clear_error(BrokerType::Kafka, "127.0.0.1:9").await;
}

#[tokio::test]
async fn redis_hands_a_crashed_consumers_entries_to_another_after_redeliver_after() {
    let Some(b) = broker(BrokerType::RedisStreams, ContentMode::Binary).await else {
        return;
    };
    let topic = unique("claim");
    let mut crashed = b
        .subscribe(&topic, "billing", options("i-1"))
        .await
        .unwrap();
    let mut survivor = b
        .subscribe(&topic, "billing", options("i-2"))
        .await
        .unwrap();
    b.publish(&topic, &event(5), None).await.unwrap();
    // Whichever instance got it dies without acking; the other takes it over.
    let crashed_got_it = tokio::select! {
        d = crashed.next() => { drop(d.unwrap()); true }
        d = survivor.next() => { drop(d.unwrap()); false }
    };
    let mut live = if crashed_got_it {
        drop(crashed);
        survivor
    } else {
        drop(survivor);
        crashed
    };
    let again = next(&mut live).await;
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
}

fn number(d: &Delivery) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(d.event.data.as_ref().unwrap()).unwrap();
    v["n"].as_u64().unwrap()
}

/// Kafka commits an offset per partition: what is above the first unsettled event comes
/// again after a restart, what is below it never does.
#[tokio::test]
async fn kafka_commits_only_below_the_first_unsettled_event() {
    let Some(b) = broker(BrokerType::Kafka, ContentMode::Binary).await else {
        return;
    };
    let topic = unique("commit");
    let mut sub = b.subscribe(&topic, "ledger", options("i-1")).await.unwrap();
    for n in 0..3 {
        b.publish(&topic, &event(n), Some("one-key")).await.unwrap();
    }
    let d0 = next(&mut sub).await;
    let d1 = next(&mut sub).await;
    let d2 = next(&mut sub).await;
    assert_eq!([number(&d0), number(&d1), number(&d2)], [0, 1, 2]);
    d0.ack().await.unwrap();
    d2.ack().await.unwrap();
    sub.close().await;
    // The app still held 1 when the subscription closed.
    drop(d1);
    let mut again = b.subscribe(&topic, "ledger", options("i-1")).await.unwrap();
    let r1 = next(&mut again).await;
    assert_eq!((number(&r1), r1.attempt), (1, 2));
    let r2 = next(&mut again).await;
    assert_eq!(
        (number(&r2), r2.attempt),
        (2, 1),
        "settled above an unsettled one: delivered again (at-least-once)"
    );
    r1.ack().await.unwrap();
    r2.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), again.next())
            .await
            .is_err(),
        "0 was committed"
    );
    again.close().await;
    let mut third = b.subscribe(&topic, "ledger", options("i-1")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), third.next())
            .await
            .is_err(),
        "everything was committed"
    );
    third.close().await;
    b.close().await;
}

#[tokio::test]
async fn kafka_holds_back_past_the_in_flight_bound() {
    let Some(b) = broker(BrokerType::Kafka, ContentMode::Binary).await else {
        return;
    };
    let topic = unique("bound");
    let mut opts = options("i-1");
    opts.max_in_flight = 2;
    let mut sub = b.subscribe(&topic, "ledger", opts).await.unwrap();
    for n in 0..4 {
        b.publish(&topic, &event(n), Some("one-key")).await.unwrap();
    }
    let d0 = next(&mut sub).await;
    let d1 = next(&mut sub).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), sub.next())
            .await
            .is_err(),
        "two in flight: the third waits"
    );
    d0.ack().await.unwrap();
    let d2 = next(&mut sub).await;
    assert_eq!(number(&d2), 2);
    d1.ack().await.unwrap();
    d2.ack().await.unwrap();
    let d3 = next(&mut sub).await;
    assert_eq!((number(&d3), d3.attempt), (3, 1));
    d3.ack().await.unwrap();
    sub.close().await;
    b.close().await;
}

#[tokio::test]
async fn kafka_group_members_share_the_partitions() {
    let Some(b) = broker(BrokerType::Kafka, ContentMode::Binary).await else {
        return;
    };
    let topic = unique("shared");
    let mut one = b
        .subscribe(&topic, "workers", options("i-1"))
        .await
        .unwrap();
    let mut two = b
        .subscribe(&topic, "workers", options("i-2"))
        .await
        .unwrap();
    for n in 0..12 {
        b.publish(&topic, &event(n), Some(&format!("key-{}", n % 6)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut by = [0, 0];
    while seen.len() < 12 {
        let (d, who) = tokio::time::timeout(WAIT, async {
            tokio::select! {
                d = one.next() => (d.unwrap(), 0),
                d = two.next() => (d.unwrap(), 1),
            }
        })
        .await
        .expect("all 12 within 15s");
        seen.push(number(&d));
        by[who] += 1;
        d.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..12).collect::<Vec<_>>(), "each event once");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), async {
            tokio::select! {
                d = one.next() => d,
                d = two.next() => d,
            }
        })
        .await
        .is_err(),
        "and no more: {by:?}"
    );
    one.close().await;
    two.close().await;
    b.close().await;
}

#[tokio::test]
async fn kafka_without_auto_create_says_the_topic_is_missing() {
    let Ok(url) = std::env::var("IEUM_TEST_KAFKA_URL") else {
        eprintln!("skipped for kafka: set IEUM_TEST_KAFKA_URL to run it");
        return;
    };
    let mut s = spec(BrokerType::Kafka, Some(url), ContentMode::Binary);
    s.auto_create = false;
    let b = ieum_bridge::connect("fixed", &s).await.unwrap();
    let topic = unique("absent");
    let err = b.publish(&topic, &event(0), None).await.unwrap_err();
    assert!(
        matches!(&err, BrokerError::Missing(what) if what.contains(&topic)),
        "{err}"
    );
    assert!(err.to_string().contains("autoCreate"), "{err}");
    let err = b
        .subscribe(&topic, "billing", options("c1"))
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Missing(_)), "{err}");
    // Nothing was created on the way: a broker that creates topics says it still is not there.
    let err = b.publish(&topic, &event(0), None).await.unwrap_err();
    assert!(matches!(err, BrokerError::Missing(_)), "{err}");
    b.close().await;
}

#[tokio::test]
async fn missing_secrets_and_kafka_credentials_are_config_errors() {
    let mut s = spec(
        BrokerType::NatsJetStream,
        Some("nats://127.0.0.1:4222".into()),
        ContentMode::Binary,
    );
    s.credentials = Some(ieum_model::bridge::Credentials {
        username: None,
        from_env: "IEUM_TEST_SURELY_UNSET_TOKEN".into(),
    });
    let err = ieum_bridge::connect("bus", &s).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "PubSub/bus: the environment variable IEUM_TEST_SURELY_UNSET_TOKEN (credentials.fromEnv) is not set in this process"
    );
    // Kafka without SASL: credentials are refused before anything is dialled.
    let mut s = spec(
        BrokerType::Kafka,
        Some("kafka://127.0.0.1:9".into()),
        ContentMode::Binary,
    );
    s.credentials = Some(ieum_model::bridge::Credentials {
        username: Some("svc".into()),
        from_env: "PATH".into(),
    });
    let err = ieum_bridge::connect("bus", &s).await.err().unwrap();
    assert!(matches!(err, BrokerError::Config(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("PubSub/bus: `credentials` are not supported for kafka"),
        "{err}"
    );
    assert!(err.to_string().contains("SASL"), "{err}");
    let mut s = spec(
        BrokerType::RabbitMq,
        Some("amqp://u:p@127.0.0.1".into()),
        ContentMode::Binary,
    );
    s.auto_create = false;
    let err = ieum_bridge::connect("bus", &s).await.err().unwrap();
    assert!(err.to_string().contains("E3002"), "{err}");
}

/// Input bindings read queues fed from outside ieum: a plain message (no CloudEvent) is
/// wrapped with the binding's source and the broker's stable message id when the
/// subscription asks for it, and a CloudEvent is still read as one.
#[tokio::test]
async fn raw_subscriptions_wrap_plain_messages_from_nats_and_redis() {
    for kind in [BrokerType::NatsJetStream, BrokerType::RedisStreams] {
        let Some(b) = broker(kind, ContentMode::Binary).await else {
            continue;
        };
        let url = std::env::var(env_var(kind).unwrap()).unwrap();
        let topic = unique("legacy");
        let raw = SubscribeOptions {
            raw_source: Some(format!("/bus/{topic}")),
            ..options("raw")
        };
        let mut sub = b.subscribe(&topic, &unique("g"), raw).await.unwrap();
        // A producer outside ieum writes a plain payload.
        match kind {
            BrokerType::NatsJetStream => {
                let js =
                    async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("content-type", "text/plain");
                js.publish_with_headers(topic.clone(), headers, Bytes::from_static(b"hello"))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            _ => {
                let client = redis::Client::open(url.as_str()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let _: String = redis::cmd("XADD")
                    .arg(&topic)
                    .arg("*")
                    .arg("data")
                    .arg("hello")
                    .arg("content-type")
                    .arg("text/plain")
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
        let d = next(&mut sub).await;
        let e = &d.event;
        assert_eq!(e.source, format!("/bus/{topic}"), "{}", kind.as_str());
        assert_eq!(e.ty, ieum_bridge::cloudevents::binding::RAW_TYPE);
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(e.data.as_deref(), Some(&b"hello"[..]));
        let first_id = e.id.clone();
        // The id is the broker's: a redelivery keeps it.
        d.nack(Duration::from_millis(50)).await.unwrap();
        let again = next(&mut sub).await;
        assert_eq!(again.event.id, first_id, "{}", kind.as_str());
        again.ack().await.unwrap();
        // A CloudEvent on the same topic is still read as itself.
        b.publish(&topic, &event(1), None).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.event.ty, "com.example.order.created");
        d.ack().await.unwrap();
        sub.close().await;
    }
}
