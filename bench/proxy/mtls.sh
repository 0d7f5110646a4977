#!/usr/bin/env bash
# mTLS between a sidecar pair vs plain text (figures in docs/benchmarks.md; target: mTLS
# costs <= 10 % throughput with keep-alive). Two servers: one `--dev` (plain text between
# sidecars), one not (every sidecar enrols and the pair talks mTLS); the same pair layout
# behind each (client outbound -> up inbound -> nginx "ok"). wrk runs through each pair in
# turn, twice, interleaved; then new connections per second straight to each `up` inbound
# listener (one request per connection; over mTLS the load generator enrols like a sidecar).
# Pinning: the sidecars on core 1; wrk, the load generator and nginx on core 0.
# Needs: apt-get install -y nginx wrk
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx wrk" >&2; exit 1; }
done
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
PROFILE="${PROFILE:-dist}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
echo "building the $PROFILE binaries..." >&2
cargo build --profile "$PROFILE" -q -p ieum -p ieum-bench
IEUM="$CARGO_TARGET_DIR/$PROFILE/ieum"
GEN="$CARGO_TARGET_DIR/$PROFILE/ieum-bench"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:9101; location / { return 200 "ok"; } } }
CONF
taskset -c 0 nginx -c "$work/nginx.conf" & pids+=($!)

# pair NAME SERVER-PORT BASE-PORT [server flags]: a server, then `client` and `up` sidecars.
pair() {
  local name=$1 sport=$2 base=$3; shift 3
  "$IEUM" server --listen "127.0.0.1:$sport" --data-dir "$work/$name-server" "$@" 2>"$work/$name-server.log" & pids+=($!)
  sleep 1
  taskset -c 1 "$IEUM" sidecar --server "http://127.0.0.1:$sport" --service client --app-port 9199 \
    --data-dir "$work/$name-c" --outbound "127.0.0.1:$base" --inbound "127.0.0.1:$((base + 1))" \
    --admin "127.0.0.1:$((base + 9))" 2>"$work/$name-c.log" & pids+=($!)
  taskset -c 1 "$IEUM" sidecar --server "http://127.0.0.1:$sport" --service up --app-port 9101 \
    --data-dir "$work/$name-u" --outbound "127.0.0.1:$((base + 10))" --inbound "127.0.0.1:$((base + 11))" \
    --admin "127.0.0.1:$((base + 19))" 2>"$work/$name-u.log" & pids+=($!)
}
pair plain 9100 9110 --dev
plain_pids="${pids[-2]},${pids[-1]}"; plain_up=${pids[-1]}
pair mtls 9130 9140
mtls_pids="${pids[-2]},${pids[-1]}"; mtls_up=${pids[-1]}
for port in 9110 9140; do
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -H 'Host: up' "http://127.0.0.1:$port/" && break
    sleep 0.2
  done
done
grep -q 'identity  spiffe://' "$work/mtls-u.log" || { echo "the mTLS pair did not enrol:" >&2; cat "$work/mtls-u.log" >&2; exit 1; }
sleep 2

cpu() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
TICK=$(getconf CLK_TCK)
bench() {
  local name=$1 procs=$2; shift 2
  local before after rps p50 p99 secs
  before=$(cpu "$procs")
  taskset -c 0 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" > "$work/wrk.txt"
  after=$(cpu "$procs")
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  secs=${DURATION%s}
  per=$(awk -v r="$rps" -v c="$((after - before))" -v t="$TICK" -v d="$secs" \
    'BEGIN { u = c / t / d; printf "cpu %.2f core  %6.0f req/s per core", u, (u > 0 ? r / u : 0) }')
  printf '%-26s %10s req/s   p50 %8s   p99 %8s   %s\n' "$name" "$rps" "$p50" "$p99" "$per"
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk: 1 thread, $CONNS connections, $DURATION, keep-alive; sidecars on core 1"
for round in 1 2; do
  bench "pair, plain text ($round)" "$plain_pids" -H 'Host: up' http://127.0.0.1:9110/
  bench "pair, mTLS ($round)" "$mtls_pids" -H 'Host: up' http://127.0.0.1:9140/
done
echo "new connections, one request each, 16 at a time, 10 s, straight to the up sidecar's inbound listener"
printf '%-26s ' "plain text"; taskset -c 0 "$GEN" handshakes --target 127.0.0.1:9121 --pid "$plain_up"
printf '%-26s ' "mTLS (TLS 1.3, P-256)"; taskset -c 0 "$GEN" handshakes --target 127.0.0.1:9151 --mesh-server http://127.0.0.1:9130 --service up --pid "$mtls_up"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
