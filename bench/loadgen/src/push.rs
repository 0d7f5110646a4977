//! The push-stream scenario: what one endpoint change costs across many clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ieum_wire::PROTOCOL;
use ieum_wire::v1::push_client::PushClient;
use ieum_wire::v1::{ClientMessage, Hello, client_message};
use prost::Message;
use tokio::time::Instant;

use crate::{Server, client, register_all, send};

/// What one client received: (arrival, encoded bytes) per message after its snapshot.
type Log = Arc<Mutex<Vec<(Instant, usize)>>>;

fn calls_of(client: usize, calls: usize, services: usize) -> Vec<usize> {
    (0..calls)
        .map(|k| (client * 7 + k * 1009) % services)
        .collect()
}

/// Opens a push stream calling `services`; returns the snapshot size and a log of later
/// messages.
async fn open(
    channel: tonic::transport::Channel,
    calls: Vec<String>,
) -> anyhow::Result<(usize, Log)> {
    let mut c = PushClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = Hello {
        protocol: PROTOCOL,
        client: "bench".into(),
        calls,
        ..Default::default()
    };
    tx.send(ClientMessage {
        kind: Some(client_message::Kind::Hello(hello)),
    })
    .await?;
    let mut stream = c
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let snapshot = stream.message().await?.context("no snapshot")?;
    let log: Log = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        let _keep_open = tx;
        while let Ok(Some(m)) = stream.message().await {
            l.lock()
                .expect("log lock")
                .push((Instant::now(), m.encoded_len()));
        }
    });
    Ok((snapshot.encoded_len(), log))
}

pub(crate) async fn run(
    server: &Server,
    services: usize,
    endpoints: usize,
    clients: usize,
    calls: usize,
    changes: usize,
) -> anyhow::Result<()> {
    let base = &server.base;
    let http = client(64);
    eprintln!("registering {services} services x {endpoints} endpoints");
    register_all(&http, base, services * endpoints, services, 64, "1h").await?;

    // Clients share a few HTTP/2 connections, as many processes on few nodes would not;
    // it keeps the load generator within its file limits and does not change the bytes.
    let channels: Vec<tonic::transport::Channel> = {
        let mut v = Vec::new();
        for _ in 0..clients.div_ceil(50) {
            v.push(
                tonic::transport::Endpoint::from_shared(base.clone())?
                    .connect()
                    .await?,
            );
        }
        v
    };
    eprintln!("opening {clients} push streams, {calls} services each");
    let mut logs = Vec::with_capacity(clients);
    let mut snapshot_bytes = 0usize;
    for i in 0..clients {
        let names = calls_of(i, calls, services)
            .into_iter()
            .map(|s| format!("svc-{s}"))
            .collect();
        let (size, log) = open(channels[i / 50].clone(), names).await?;
        snapshot_bytes += size;
        logs.push(log);
    }
    // What a mesh-wide push (every proxy gets everything) costs per client.
    let all: Vec<String> = (0..services).map(|s| format!("svc-{s}")).collect();
    let (mesh_snapshot, _) = open(channels[0].clone(), all).await?;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = server.cpu_seconds()?;
    let mut latencies = Vec::new();
    let mut affected_bytes = Vec::new();
    let mut unaffected_bytes = 0usize;
    let mut missed = 0usize;
    for n in 0..changes {
        let target = calls_of(n * 13, calls, services)[0];
        let affected: Vec<usize> = (0..clients)
            .filter(|c| calls_of(*c, calls, services).contains(&target))
            .collect();
        for log in &logs {
            log.lock().expect("log lock").clear();
        }
        let body = serde_json::json!({"id": format!("x{n}"), "address": "10.9.9.9", "port": 80, "ttl": "1h"}).to_string();
        let t0 = Instant::now();
        let (status, _) = send(
            &http,
            "POST",
            &format!("{base}/v1/services/svc-{target}/instances"),
            Some(body),
        )
        .await?;
        anyhow::ensure!(status == 201, "registration answered {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (c, log) in logs.iter().enumerate() {
            let got = log.lock().expect("log lock").clone();
            let bytes: usize = got.iter().map(|(_, b)| b).sum();
            if affected.contains(&c) {
                match got.first() {
                    Some((at, _)) => latencies.push(at.duration_since(t0).as_secs_f64() * 1000.0),
                    None => missed += 1,
                }
                affected_bytes.push(bytes);
            } else {
                unaffected_bytes += bytes;
            }
        }
    }
    let cpu = server.cpu_seconds()? - cpu_before;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let max_affected = affected_bytes.iter().max().copied().unwrap_or(0);
    let avg_affected =
        affected_bytes.iter().sum::<usize>() as f64 / affected_bytes.len().max(1) as f64;
    let avg_snapshot = snapshot_bytes as f64 / clients as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "push", "services": services, "endpointsPerService": endpoints, "clients": clients,
            "callsPerClient": calls, "changes": changes,
            "affectedNotifications": affected_bytes.len(), "missedNotifications": missed,
            "bytesPerAffectedClientMax": max_affected, "bytesPerAffectedClientAvg": avg_affected.round(),
            "bytesToUnaffectedClients": unaffected_bytes,
            "propagationP50Ms": (pct(0.5) * 10.0).round() / 10.0, "propagationP99Ms": (pct(0.99) * 10.0).round() / 10.0,
            "snapshotBytesPerClientAvg": avg_snapshot.round(),
            "naiveResendOfClientViewBytes": avg_snapshot.round(),
            "naiveMeshWideSnapshotBytes": mesh_snapshot,
            "serverCpuSecondsForChanges": (cpu * 100.0).round() / 100.0,
            "serverRssMiB": server.rss_mib()?.round(),
        })
    );
    Ok(())
}
