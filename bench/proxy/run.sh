#!/usr/bin/env bash
# Proxy benchmark (figures in docs/benchmarks.md): one upstream (nginx answering "ok"), then
# the same wrk load (HTTP/1.1 keep-alive) direct, through one HAProxy hop, through nginx as a
# proxy, through one ieum sidecar hop (outbound only, upstream registered directly) and through
# an ieum sidecar pair (outbound -> inbound), with each proxy's CPU time so throughput per core
# compares proxies even when the load generator's core is the bottleneck; then HTTP/2 (h2c
# prior knowledge, h2load) to the same proxies; then the same at a fixed rate (RATE, default
# 1,000 req/s): latency and CPU per 100k.
# Pinning: the proxy under test on core 1; wrk/h2load and the upstream on core 0.
# The sidecar is the shipped build (`--profile dist`). The server runs `--dev`, so the pair
# talks plain text; bench/proxy/mtls.sh measures the same pair over mTLS.
# Needs: apt-get install -y haproxy nginx wrk nghttp2-client   (Debian packages)
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in haproxy nginx wrk h2load taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y haproxy nginx wrk nghttp2-client" >&2; exit 1; }
done
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
echo "building the dist binaries (whole-program optimisation; a few minutes)..." >&2
cargo build --profile dist -q -p ieum -p ieum-bench
IEUM="${CARGO_TARGET_DIR:-target}/dist/ieum"
GEN="${CARGO_TARGET_DIR:-target}/dist/ieum-bench"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:9101; location / { return 200 "ok"; } }
}
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)
# nginx as the proxy under test (its own instance, one worker on core 1); h2c on 9104.
cat > "$work/nginx-proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx-proxy.pid; error_log $work/nginx-proxy.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:9101; keepalive 64; }
  server {
    listen 127.0.0.1:9103;
    listen 127.0.0.1:9104 http2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
taskset -c 1 nginx -c "$work/nginx-proxy.conf" -p "$work" & pids+=($!)

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
  bind 127.0.0.1:9105 proto h2
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:9101
CONF
taskset -c 1 haproxy -f "$work/haproxy.cfg" & pids+=($!)
haproxy_pid=$!

"$IEUM" server --dev --listen 127.0.0.1:9100 --data-dir "$work/server" 2>"$work/server.log" & pids+=($!)
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
anon() { awk '/RssAnon/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
sleep 2
echo "sidecar RSS idle: client $(rss "$client_pid") MiB (anonymous $(anon "$client_pid") MiB), up $(rss "$up_pid") MiB; HAProxy $(rss "$haproxy_pid") MiB (anonymous $(anon "$haproxy_pid") MiB)"
# nginx's worker is the child of the proxy instance's master.
nginx_proxy_pid=$(pgrep -P "$(cat "$work/nginx-proxy.pid")" | head -n1)
# CPU seconds (utime + stime) of a comma-separated pid list.
cpu() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
TICK=$(getconf CLK_TCK)

# bench NAME PIDS(comma-separated, or -) WRK-ARGS…: throughput, latency, and the proxies'
# CPU during the run, so "per core" = requests / CPU seconds of the proxies under test.
bench() {
  local name=$1 procs=$2; shift 2
  local before after rps p50 p99 secs
  [ "$procs" = - ] || before=$(cpu "$procs")
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" > "$work/wrk.txt"
  [ "$procs" = - ] || after=$(cpu "$procs")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  per=""
  if [ "$procs" != - ]; then
    secs=${DURATION%s}
    per=$(awk -v r="$rps" -v c="$((after - before))" -v t="$TICK" -v d="$secs" \
      'BEGIN { u = c / t / d; printf "cpu %.2f core  %6.0f req/s per core", u, (u > 0 ? r / u : 0) }')
  fi
  printf '%-34s %10s req/s   p50 %8s   p99 %8s   %s\n' "$name" "$rps" "$p50" "$p99" "$per"
}
echo "wrk: 1 thread, $CONNS connections, $DURATION; proxy on core 1, wrk + upstream on core 0"
bench "direct (nginx)" - http://127.0.0.1:9101/
bench "one HAProxy hop" "$haproxy_pid" http://127.0.0.1:9102/
bench "one nginx hop" "$nginx_proxy_pid" http://127.0.0.1:9103/
bench "one ieum hop (outbound)" "$client_pid" -H 'Host: direct' http://127.0.0.1:9110/
echo "sidecar RSS under load: client $(rss "$client_pid") MiB"
bench "ieum pair (outbound -> inbound)" "$client_pid,$up_pid" -H 'Host: up' http://127.0.0.1:9110/
echo "sidecar RSS after load: client $(rss "$client_pid") MiB, up $(rss "$up_pid") MiB"

# h2 NAME PIDS URL [h2load args]: HTTP/2 prior knowledge, 1 thread, CONNS connections,
# 10 streams each; the upstream side stays HTTP/1.1 keep-alive for every proxy.
h2() {
  local name=$1 procs=$2; shift 2
  local before after rps per secs
  before=$(cpu "$procs")
  taskset -c 0 h2load -t1 -c"$CONNS" -m10 -D"${DURATION%s}" "$@" > "$work/h2.txt" 2>&1
  after=$(cpu "$procs")
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$work/h2.txt")
  secs=${DURATION%s}
  per=$(awk -v r="$rps" -v c="$((after - before))" -v t="$TICK" -v d="$secs" \
    'BEGIN { u = c / t / d; printf "cpu %.2f core  %6.0f req/s per core", u, (u > 0 ? r / u : 0) }')
  local lat
  lat=$(awk '/^time for request:/ {print "mean " $6 " max " $5}' "$work/h2.txt")
  printf '%-34s %10s req/s   %s   %s\n' "$name" "$rps" "$lat" "$per"
}
echo "h2load: 1 thread, $CONNS connections x 10 streams, $DURATION, h2c prior knowledge"
h2 "h2: one HAProxy hop" "$haproxy_pid" http://127.0.0.1:9105/
h2 "h2: one nginx hop" "$nginx_proxy_pid" http://127.0.0.1:9104/
h2 "h2: one ieum hop (outbound)" "$client_pid" -H ':authority: direct' http://127.0.0.1:9110/

RATE="${RATE:-1000}"
echo "fixed rate: $RATE req/s for 10 s (open loop, keep-alive), CPU of the proxies under test"
fixed() {
  local name=$1; shift
  printf '%-34s ' "$name"
  taskset -c 0 "$GEN" fixed-rate --rate "$RATE" --seconds 10 "$@"
}
fixed "direct (nginx)" --url http://127.0.0.1:9101/
fixed "one HAProxy hop" --url http://127.0.0.1:9102/ --pids "$haproxy_pid"
fixed "one nginx hop" --url http://127.0.0.1:9103/ --pids "$nginx_proxy_pid"
fixed "one ieum hop (outbound)" --url http://127.0.0.1:9110/ --host direct --pids "$client_pid"
fixed "ieum pair (outbound -> inbound)" --url http://127.0.0.1:9110/ --host up --pids "$client_pid,$up_pid"
echo "sidecar RSS at the end: client $(rss "$client_pid") MiB, up $(rss "$up_pid") MiB"
