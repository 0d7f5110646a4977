//! Publish latency through `ieum_bridge` vs `async-nats` directly, on one JetStream
//! stream: both wait for the publish ack. Run by `bench/bridge/run.sh`.
//!
//! Usage: `publish_latency [NATS_URL] [COUNT]` (defaults `nats://127.0.0.1:4222`, 5000).

use std::time::Duration;

use bytes::Bytes;
use ieum_bridge::CloudEvent;
use ieum_model::bridge::PubSubSpec;
use tokio::time::Instant;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
#[allow(clippy::print_stdout, clippy::unwrap_used)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let count: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(5000);
    let topic = format!("bench-{}", &ieum_bridge::cloudevents::new_id()[..8]);
    let payload = Bytes::from(format!("{{\"order\":42,\"pad\":\"{}\"}}", "x".repeat(200)));

    let spec: PubSubSpec =
        serde_json::from_value(serde_json::json!({"type": "nats-jetstream", "url": url})).unwrap();
    let bridge = ieum_bridge::connect("bench", &spec).await.unwrap();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // The bridge creates the stream on its first publish; both then publish to it.
    let warm = CloudEvent::wrap("bench", "bench", Some("application/json"), payload.clone());
    bridge.publish(&topic, &warm, None).await.unwrap();

    let mut direct = Vec::with_capacity(count);
    let mut through = Vec::with_capacity(count);
    for i in 0..count + 500 {
        // Interleaved, so both see the same broker and machine load.
        let t = Instant::now();
        js.publish(topic.clone(), payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
        let d = t.elapsed();
        let t = Instant::now();
        // What the sidecar does per publish: wrap the body as a new event, then publish.
        let event = CloudEvent::wrap(
            "orders",
            "ieum.publish",
            Some("application/json"),
            payload.clone(),
        );
        bridge
            .publish(&topic, &event, Some("customer-9"))
            .await
            .unwrap();
        let b = t.elapsed();
        if i >= 500 {
            direct.push(d);
            through.push(b);
        }
    }
    direct.sort();
    through.sort();
    let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    let (b50, b99) = (percentile(&through, 0.5), percentile(&through, 0.99));
    println!(
        "publish latency, {count} publishes each, {} B payload, JetStream ack awaited",
        payload.len()
    );
    println!("{:<22} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!(
        "{:<22} {:>9.3} {:>9.3}",
        "async-nats directly",
        ms(d50),
        ms(d99)
    );
    println!("{:<22} {:>9.3} {:>9.3}", "ieum_bridge", ms(b50), ms(b99));
    println!(
        "{:<22} {:>9.3} {:>9.3}   (target: <= 0.300 at p99)",
        "added",
        ms(b50.saturating_sub(d50)),
        ms(b99.saturating_sub(d99))
    );
}
