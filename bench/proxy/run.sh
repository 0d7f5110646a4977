#!/usr/bin/env bash
# Proxy benchmark (figures in docs/benchmarks.md): one upstream (nginx answering "ok"), then
# the same wrk load direct, through one HAProxy hop, through one ieum sidecar hop (outbound
# only, upstream registered directly) and through an ieum sidecar pair (outbound -> inbound);
# then the same four at a fixed rate (RATE, default 1,000 req/s): latency and CPU per 100k.
# Pinning: the proxy under test on core 1; wrk and the upstream on core 0.
# Needs: apt-get install -y haproxy nginx wrk   (Debian packages)
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in haproxy nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y haproxy nginx wrk" >&2; exit 1; }
done
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
echo "building release binaries..." >&2
cargo build --release -q -p ieum -p ieum-bench
IEUM="${CARGO_TARGET_DIR:-target}/release/ieum"
GEN="${CARGO_TARGET_DIR:-target}/release/ieum-bench"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:9101; location / { return 200 "ok"; } } }
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:9102
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:9101
CONF
taskset -c 1 haproxy -f "$work/haproxy.cfg" & pids+=($!)
haproxy_pid=$!

"$IEUM" server --listen 127.0.0.1:9100 --data-dir "$work/server" 2>"$work/server.log" & pids+=($!)
sleep 1
export IEUM_SERVER=http://127.0.0.1:9100
# One hop: the upstream registered directly, called through one sidecar's outbound listener.
"$IEUM" register direct --address 127.0.0.1 --port 9101 --ttl 1h >/dev/null 2>&1 & pids+=($!)
taskset -c 1 "$IEUM" sidecar --service client --app-port 9199 --data-dir "$work/c" \
  --outbound 127.0.0.1:9110 --inbound 127.0.0.1:9111 --admin 127.0.0.1:9119 2>"$work/c.log" & pids+=($!)
# Pair: the upstream behind its own sidecar.
taskset -c 1 "$IEUM" sidecar --service up --app-port 9101 --data-dir "$work/u" \
  --outbound 127.0.0.1:9120 --inbound 127.0.0.1:9121 --admin 127.0.0.1:9129 2>"$work/u.log" & pids+=($!)
client_pid=${pids[-2]}; up_pid=${pids[-1]}
for _ in $(seq 1 100); do
  curl -sf -o /dev/null -H 'Host: up' http://127.0.0.1:9110/ && curl -sf -o /dev/null -H 'Host: direct' http://127.0.0.1:9110/ && break
  sleep 0.2
done
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
echo "sidecar RSS idle: client $(rss "$client_pid") MiB, up $(rss "$up_pid") MiB"

bench() {
  local name=$1; shift
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" > "$work/wrk.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  printf '%-34s %10s req/s   p50 %8s   p99 %8s\n' "$name" "$rps" "$p50" "$p99"
}
echo "wrk: 1 thread, $CONNS connections, $DURATION; proxy on core 1, wrk + upstream on core 0"
bench "direct (nginx)" http://127.0.0.1:9101/
bench "one HAProxy hop" http://127.0.0.1:9102/
bench "one ieum hop (outbound)" -H 'Host: direct' http://127.0.0.1:9110/
echo "sidecar RSS under load: client $(rss "$client_pid") MiB"
bench "ieum pair (outbound -> inbound)" -H 'Host: up' http://127.0.0.1:9110/
echo "sidecar RSS after load: client $(rss "$client_pid") MiB, up $(rss "$up_pid") MiB"

RATE="${RATE:-1000}"
echo "fixed rate: $RATE req/s for 10 s (open loop, keep-alive), CPU of the proxies under test"
fixed() {
  local name=$1; shift
  printf '%-34s ' "$name"
  taskset -c 0 "$GEN" fixed-rate --rate "$RATE" --seconds 10 "$@"
}
fixed "direct (nginx)" --url http://127.0.0.1:9101/
fixed "one HAProxy hop" --url http://127.0.0.1:9102/ --pids "$haproxy_pid"
fixed "one ieum hop (outbound)" --url http://127.0.0.1:9110/ --host direct --pids "$client_pid"
fixed "ieum pair (outbound -> inbound)" --url http://127.0.0.1:9110/ --host up --pids "$client_pid,$up_pid"
echo "sidecar RSS at the end: client $(rss "$client_pid") MiB, up $(rss "$up_pid") MiB"
