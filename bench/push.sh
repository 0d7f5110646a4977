#!/usr/bin/env bash
# Push-stream benchmark (figures recorded in docs/benchmarks.md): 10,000 services x 5
# endpoints, 1,000 clients each calling 10 services, 100 endpoint changes one at a time.
# Prints one JSON line: bytes per affected client, bytes to unaffected clients, propagation
# p50/p99, snapshot sizes, and what a naive full resend would cost.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "building release binaries..." >&2
cargo build --release -q -p ieum -p ieum-bench
target="${CARGO_TARGET_DIR:-target}/release"
"$target/ieum-bench" --ieum "$target/ieum" push --services 10000 --endpoints 5 --clients 1000 --calls 10 --changes "${CHANGES:-100}"
