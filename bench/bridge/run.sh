#!/usr/bin/env bash
# Publish p50/p99 through ieum_bridge vs async-nats directly (target: <= 0.3 ms added at
# p99). Needs NATS with JetStream: NATS_URL (default nats://127.0.0.1:4222).
# Usage: bench/bridge/run.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ieum/target}"
cargo run --release --quiet -p ieum-bridge --example publish_latency -- \
  "${NATS_URL:-nats://127.0.0.1:4222}" "${1:-5000}"
