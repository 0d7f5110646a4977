#!/usr/bin/env bash
# API gateway benchmark (figures in docs/benchmarks.md; target: ieum gateway >= 1.0x nginx):
# the same API published two ways in front of one upstream (nginx answering "ok"):
#  - `ieum gateway`: an `Api` at /b with API-key auth (the key's SHA-256 compared with every
#    known key's), the service `up` registered directly at the upstream (no sidecar, so
#    one proxy hop, as nginx);
#  - nginx as the same reverse proxy with key checking: /b/ -> upstream, 401 unless the
#    x-api-key header holds the key (nginx compares the key itself, not a hash);
# then wrk (HTTP/1.1 keep-alive) through each, interleaved, twice, with each proxy's CPU
# time, so throughput per core compares them even when the load generator's core is the
# bottleneck. Pinning: the proxy under test on core 1; wrk and the upstream on core 0.
# Needs: apt-get install -y nginx wrk
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in nginx wrk taskset curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx wrk" >&2; exit 1; }
done
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
PROFILE="${PROFILE:-dist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
echo "building the $PROFILE binary..." >&2
cargo build --profile "$PROFILE" -q -p ieum
IEUM="$CARGO_TARGET_DIR/$PROFILE/ieum"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:9301; location / { return 200 "ok"; } } }
CONF
taskset -c 0 nginx -c "$work/upstream.conf" & pids+=($!)

"$IEUM" server --dev --listen 127.0.0.1:9300 --data-dir "$work/server" 2>"$work/server.log" & pids+=($!)
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:9300/healthz && break; sleep 0.1; done
curl -sf -o /dev/null -X POST http://127.0.0.1:9300/v1/services/up/instances \
  -H 'content-type: application/json' -d '{"id":"up-1","address":"127.0.0.1","port":9301,"ttl":"1h"}'
curl -sf -o /dev/null -X POST http://127.0.0.1:9300/v1/apply -H 'content-type: application/yaml' --data-binary @- <<'YAML'
apiVersion: ieum.dev/v1
kind: Api
metadata: {name: bench}
spec:
  basePath: /b
  backend: {service: up}
  auth: {apiKey: {header: x-api-key}}
---
apiVersion: ieum.dev/v1
kind: ApiConsumer
metadata: {name: load}
spec: {apis: [bench]}
YAML
KEY=$(curl -sf -X POST http://127.0.0.1:9300/v1/apikeys -H 'content-type: application/json' \
  -d '{"consumer":"load"}' | sed -E 's/.*"key":"([^"]+)".*/\1/')
[ -n "$KEY" ] || { echo "no API key" >&2; exit 1; }

taskset -c 1 "$IEUM" gateway --server http://127.0.0.1:9300 --listen 127.0.0.1:9310 \
  --admin 127.0.0.1:9319 --data-dir "$work/gateway" 2>"$work/gateway.log" & gw=$!; pids+=($gw)

cat > "$work/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/proxy.pid; error_log $work/proxy.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:9301; keepalive 64; }
  server { listen 127.0.0.1:9320;
    location /b/ {
      if (\$http_x_api_key != "$KEY") { return 401; }
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    } } }
CONF
taskset -c 1 nginx -c "$work/proxy.conf" & ng=$!; pids+=($ng)

for port in 9310 9320; do
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $KEY" "http://127.0.0.1:$port/b/")" = 200 ] && break
    sleep 0.2
  done
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:9310/b/")" = 401 ] || { echo "the gateway let a call without a key in" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:9320/b/")" = 401 ] || { echo "nginx let a call without a key in" >&2; exit 1; }
sleep 1

# nginx's master process does no request work; count its worker.
ng_worker=$(pgrep -P "$ng" | head -n1)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
bench() {
  local name=$1 pid=$2 url=$3 before after rps p50 p99 secs
  before=$(cpu "$pid")
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H "x-api-key: $KEY" "$url" > "$work/wrk.txt"
  after=$(cpu "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  secs=${DURATION%s}
  per=$(awk -v r="$rps" -v c="$((after - before))" -v t="$TICK" -v d="$secs" \
    'BEGIN { u = c / t / d; printf "cpu %.2f core  %6.0f req/s per core", u, (u > 0 ? r / u : 0) }')
  printf '%-22s %10s req/s   p50 %8s   p99 %8s   %s\n' "$name" "$rps" "$p50" "$p99" "$per"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: 1 thread, $CONNS connections, $DURATION, keep-alive, with the API key; proxies on core 1"
for round in 1 2; do
  bench "ieum gateway ($round)" "$gw" http://127.0.0.1:9310/b/
  bench "nginx ($round)" "$ng_worker" http://127.0.0.1:9320/b/
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
