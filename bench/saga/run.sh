#!/usr/bin/env bash
# Saga benchmark (figures recorded in docs/benchmarks.md): a 3-step saga against loopback
# participants, ieum's saga coordinator side by side with Restate, each durable by default
# (ieum: every transition committed to SQLite with synchronous=FULL before it is acted on;
# Restate: every journal entry persisted — RocksDB WAL fsync — before the handler goes on).
#
# For each concurrency (1, 16, 64) and failure share (0 %, 20 %: the third action answers
# 409, so the first two are compensated), a closed-loop driver (drive.mjs) keeps N sagas in
# flight, each waiting for the final answer, warms up, then measures sagas/s and p50/p99 of
# the whole saga. The cells of both systems are interleaved (both servers are up the whole
# run) so background load on the machine hits both alike. Also recorded per cell: the CPU
# time of the system under test (ieum: the server; Restate: restate-server + the Node
# handler) per saga, and the load average.
#
# Usage: bench/saga/run.sh
#   env: SECS=20 WARMUP=3 CONCS="1 16 64" FAILS="0 0.2" SYSTEMS="ieum restate"
#        RESTATE_DIR=$HOME/.cache/ieum/restate (npm packages installed there once, outside
#        the repo; versions pinned in bench/saga/restate/package.json)
# Ports (loopback): ieum 17700, participants 19701, Restate handler 19080, Restate
# ingress 8080 / admin 9070 / node 5122 (its defaults).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
SECS="${SECS:-20}"
WARMUP="${WARMUP:-3}"
CONCS="${CONCS:-1 16 64}"
FAILS="${FAILS:-0 0.2}"
SYSTEMS="${SYSTEMS:-ieum restate}"
RESTATE_DIR="${RESTATE_DIR:-$HOME/.cache/ieum/restate}"
IEUM_PORT=17700
PART_PORT=19701
HANDLER_PORT=19080
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

has() { case " $SYSTEMS " in *" $1 "*) return 0;; esac; return 1; }

# --- binaries --------------------------------------------------------------------------
if has ieum; then
  echo "building release ieum..." >&2
  (cd "$root" && cargo build --release -q -p ieum)
  IEUM="${CARGO_TARGET_DIR:-$root/target}/release/ieum"
fi
if has restate; then
  sdk=$(node -p "require('$here/restate/package.json').dependencies['@restatedev/restate-sdk']")
  srv=$(node -p "require('$here/restate/package.json').dependencies['@restatedev/restate-server']")
  if [ ! -x "$RESTATE_DIR/node_modules/.bin/restate-server" ] ||
     [ ! -d "$RESTATE_DIR/node_modules/@restatedev/restate-sdk" ]; then
    echo "installing Restate ($srv, SDK $sdk) into $RESTATE_DIR..." >&2
    mkdir -p "$RESTATE_DIR"
    [ -f "$RESTATE_DIR/package.json" ] || (cd "$RESTATE_DIR" && npm init -y >/dev/null)
    (cd "$RESTATE_DIR" && npm i --no-audit --no-fund "@restatedev/restate-server@$srv" "@restatedev/restate-sdk@$sdk" >&2)
  fi
  RESTATE_SERVER="$RESTATE_DIR/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
  [ -x "$RESTATE_SERVER" ] || RESTATE_SERVER="$RESTATE_DIR/node_modules/.bin/restate-server"
fi

# --- processes -------------------------------------------------------------------------
work="$(mktemp -d /tmp/ieum-saga-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_http() { # URL what
  for _ in $(seq 1 120); do curl -sf -o /dev/null "$1" && return 0; sleep 0.25; done
  echo "$2 did not come up ($1); logs in $work" >&2
  trap - EXIT; exit 1
}

node "$here/participants.mjs" "$PART_PORT" 2>"$work/participants.log" &
pids+=($!)
wait_http "http://127.0.0.1:$PART_PORT/stats" participants

if has ieum; then
  "$IEUM" server --dev --data-dir "$work/ieum" --listen "127.0.0.1:$IEUM_PORT" >"$work/ieum.log" 2>&1 &
  ieum_pid=$!
  pids+=($ieum_pid)
  wait_http "http://127.0.0.1:$IEUM_PORT/readyz" "ieum server"
  for s in one two three; do
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$IEUM_PORT/v1/services/bench-$s/instances" \
      -H 'content-type: application/json' \
      -d "{\"id\": \"bench-$s-1\", \"address\": \"127.0.0.1\", \"port\": $PART_PORT, \"ttl\": \"1h\"}"
  done
  "$IEUM" --server "http://127.0.0.1:$IEUM_PORT" apply -f "$here/saga.yaml" >&2
fi

if has restate; then
  RESTATE_DISABLE_TELEMETRY=true "$RESTATE_SERVER" --base-dir "$work/restate" --no-logo \
    >"$work/restate.log" 2>&1 &
  restate_pid=$!
  pids+=($restate_pid)
  RESTATE_LOGGING=WARN NODE_PATH="$RESTATE_DIR/node_modules" \
    node "$here/restate/handler.cjs" "$HANDLER_PORT" "$PART_PORT" >"$work/handler.log" 2>&1 &
  handler_pid=$!
  pids+=($handler_pid)
  wait_http "http://127.0.0.1:9070/health" "restate-server"
  wait_http "http://127.0.0.1:8080/restate/health" "restate ingress"
  curl -sf -o /dev/null -X POST http://127.0.0.1:9070/deployments \
    -H 'content-type: application/json' -d "{\"uri\": \"http://127.0.0.1:$HANDLER_PORT\"}"
fi

cpu_ticks() { # the user+system ticks of the given pids, summed
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $t
}

results="$work/results.jsonl"
: >"$results"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "ieum: $( [ -n "${IEUM:-}" ] && "$IEUM" --version); restate-server: $( [ -n "${RESTATE_SERVER:-}" ] && "$RESTATE_SERVER" --version 2>/dev/null | head -1)" >&2

# A first short warm-up of each system (caches, connection pools, JIT).
for sys in $SYSTEMS; do
  curl -sf -o /dev/null -X POST "http://127.0.0.1:$PART_PORT/config?fail=0.2"
  node "$here/drive.mjs" --system "$sys" --port "$([ "$sys" = ieum ] && echo $IEUM_PORT || echo 8080)" \
    --concurrency 16 --warmup 0 --seconds 5 --tag "warm-$sys" >/dev/null
done

for conc in $CONCS; do
  for fail in $FAILS; do
    for sys in $SYSTEMS; do
      curl -sf -o /dev/null -X POST "http://127.0.0.1:$PART_PORT/config?fail=$fail"
      if [ "$sys" = ieum ]; then port=$IEUM_PORT; procs=("$ieum_pid"); else port=8080; procs=("$restate_pid" "$handler_pid"); fi
      t0=$(cpu_ticks "${procs[@]}")
      line=$(node "$here/drive.mjs" --system "$sys" --port "$port" --concurrency "$conc" \
        --warmup "$WARMUP" --seconds "$SECS" --tag "$sys-$conc-$fail")
      t1=$(cpu_ticks "${procs[@]}")
      stats=$(curl -sf "http://127.0.0.1:$PART_PORT/stats")
      load=$(cut -d' ' -f1 /proc/loadavg)
      echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
r["fail"] = float(sys.argv[1]); r["cpuSeconds"] = int(sys.argv[2]) / int(sys.argv[3])
r["load"] = float(sys.argv[4]); r["participants"] = json.loads(sys.argv[5])["counts"]
print(json.dumps(r))' "$fail" "$((t1 - t0))" "$(getconf CLK_TCK)" "$load" "$stats" | tee -a "$results" >&2
    done
  done
done

python3 - "$results" "$WARMUP" "$SECS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
warm, secs = float(sys.argv[2]), float(sys.argv[3])
cell = {(r["system"], r["concurrency"], r["fail"]): r for r in rows}
def fmt(r):
    if r is None: return ["—"] * 4
    # CPU of the system under test over warm-up + measurement, per saga run in that time
    per = r["cpuSeconds"] / max(1, r["total"]) * 1000
    return [f'{r["perSecond"]:,.0f}', f'{r["p50"]:.1f} / {r["p99"]:.1f}', f'{per:.2f}', f'{r["load"]:.1f}']
print()
print("| concurrency | failures | ieum sagas/s | ieum p50 / p99 (ms) | ieum CPU ms/saga | load | Restate sagas/s | Restate p50 / p99 (ms) | Restate CPU ms/saga | load | ieum ÷ Restate throughput | ieum p99 ÷ Restate p99 |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for conc in sorted({r["concurrency"] for r in rows}):
    for fail in sorted({r["fail"] for r in rows}):
        i, s = cell.get(("ieum", conc, fail)), cell.get(("restate", conc, fail))
        ratio = f'{i["perSecond"] / s["perSecond"]:.1f}×' if i and s and s["perSecond"] else "—"
        p99 = f'{i["p99"] / s["p99"]:.2f}' if i and s and s["p99"] else "—"
        print(f"| {conc} | {fail:.0%} | " + " | ".join(fmt(i) + fmt(s)) + f" | {ratio} | {p99} |")
bad = [r for r in rows if set(r["states"]) - {"completed", "compensated"}]
for r in bad:
    print(f'warning: {r["system"]} c={r["concurrency"]} fail={r["fail"]}: unexpected outcomes {r["states"]}')
i, s = cell.get(("ieum", 16, 0.0)), cell.get(("restate", 16, 0.0))
if i and s:
    t, p = i["perSecond"] / s["perSecond"], i["p99"] / s["p99"]
    print(f"\ntarget at concurrency 16, 0 % failures: throughput ≥ 5× Restate's: {t:.1f}× ({'met' if t >= 5 else 'NOT met'}); "
          f"p99 ≤ ½ Restate's: {p:.2f} ({'met' if p <= 0.5 else 'NOT met'})")
i, s = cell.get(("ieum", 16, 0.2)), cell.get(("restate", 16, 0.2))
if i and s:
    t, p = i["perSecond"] / s["perSecond"], i["p99"] / s["p99"]
    print(f"target at concurrency 16, 20 % failures: throughput ≥ 5× Restate's: {t:.1f}× ({'met' if t >= 5 else 'NOT met'}); "
          f"p99 ≤ ½ Restate's: {p:.2f} ({'met' if p <= 0.5 else 'NOT met'})")
PY
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
