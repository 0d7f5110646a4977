#!/usr/bin/env bash
# Registry benchmarks (figures recorded in docs/benchmarks.md):
#   1. registration throughput;
#   2. server CPU and memory holding 100,000 instances that heartbeat every 10 s;
#   3. change -> 1,000 blocking-query watchers and 1,000 SSE watchers notified (p50/p99).
# The load generator (bench/loadgen) starts a release `ieum server` itself on loopback,
# with a fresh data dir, and prints one JSON line of figures per scenario.
#
# Usage: bench/registry.sh [--store postgres://USER@HOST:PORT/DB]   (default: embedded SQLite)
# With PostgreSQL, each scenario runs in a fresh schema of DB (created and dropped with psql).
set -euo pipefail
export PGOPTIONS="--client-min-messages=warning"
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

pg="${2:-}"
[ "${1:-}" = "--store" ] || pg=""

echo "building release binaries..." >&2
cargo build --release -q -p ieum -p ieum-bench
target="${CARGO_TARGET_DIR:-target}/release"
gen() {
  if [ -z "$pg" ]; then
    "$target/ieum-bench" --ieum "$target/ieum" "$@"
    return
  fi
  local schema="bench_$$_$RANDOM"
  psql "$pg" -qc "CREATE SCHEMA $schema"
  local sep='?'; case "$pg" in *\?*) sep='&';; esac
  "$target/ieum-bench" --ieum "$target/ieum" --server-args=--store \
    --server-args="$pg${sep}options=-c%20search_path%3D$schema" "$@"
  psql "$pg" -qc "DROP SCHEMA $schema CASCADE"
}

echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "1/4 registration throughput" >&2
gen register --instances 20000 --concurrency 64
echo "2/4 100,000 instances, heartbeat every 10 s" >&2
gen heartbeats --instances 100000 --period 10 --seconds 30
echo "3/4 1,000 blocking-query watchers" >&2
gen watchers --watchers 1000 --kind blocking --rounds 5
echo "4/4 1,000 SSE watchers" >&2
gen watchers --watchers 1000 --kind sse --rounds 5
