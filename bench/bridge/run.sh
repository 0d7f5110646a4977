#!/usr/bin/env bash
# The sidecar bridge over NATS JetStream, with real processes (ieum server + two
# `ieum sidecar`s): publish p50/p99 through a sidecar vs async-nats directly (target:
# <= 0.3 ms added at p99), and delivery throughput of one sidecar to an app (messages/s).
# Needs NATS with JetStream: NATS_URL (default nats://127.0.0.1:4222).
# Usage: bench/bridge/run.sh [PUBLISHES] [EVENTS] [MAX_IN_FLIGHT]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ieum/target}"
PROFILE="${PROFILE:-dist}"
cargo build --locked --profile "$PROFILE" -p ieum -p ieum-bench
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$CARGO_TARGET_DIR/$PROFILE/ieum-bench" --ieum "$CARGO_TARGET_DIR/$PROFILE/ieum" bridge \
  --nats "${NATS_URL:-nats://127.0.0.1:4222}" --count "${1:-5000}" --events "${2:-20000}" \
  --max-in-flight "${3:-32}"
