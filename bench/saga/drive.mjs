// Closed-loop saga driver for both systems: CONC workers, each starting one saga and
// waiting for its final answer before starting the next. After WARMUP seconds it counts
// the sagas whose final answer arrives in the next SECONDS seconds (by final state) and
// the latency of each (start request sent → final answer received). Prints one JSON line.
//   node drive.mjs --system ieum|restate --concurrency 16 --warmup 3 --seconds 20 [--tag x]
//   ieum:    POST http://127.0.0.1:7700/v1/sagas/bench/executions?wait=10s   (Idempotency-Key)
//   restate: POST http://127.0.0.1:8080/Bench/run                           (idempotency-key)
import http from "node:http";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, v, i, all) => (v.startsWith("--") ? [...a, [v.slice(2), all[i + 1]]] : a), []),
);
const system = args.system || "ieum";
const conc = Number(args.concurrency || 16);
const warmup = Number(args.warmup || 3) * 1000;
const seconds = Number(args.seconds || 20) * 1000;
const tag = args.tag || `${process.pid}-${Date.now()}`;
const target =
  system === "ieum"
    ? { port: Number(args.port || 7700), path: "/v1/sagas/bench/executions?wait=10s" }
    : { port: Number(args.port || 8080), path: "/Bench/run" };

const agent = new http.Agent({ keepAlive: true, maxSockets: conc });

function start(n) {
  return new Promise((resolve) => {
    const data = JSON.stringify({ order: n });
    const req = http.request(
      {
        host: "127.0.0.1", port: target.port, path: target.path, method: "POST", agent,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(data), "idempotency-key": `${tag}-${n}` },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          if (res.statusCode !== 200) return resolve(`http-${res.statusCode}`);
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")).state || "no-state");
          } catch {
            resolve("bad-json");
          }
        });
      },
    );
    req.on("error", (e) => resolve(`error-${e.code || e.message}`));
    req.end(data);
  });
}

const t0 = performance.now();
const from = t0 + warmup;
const until = from + seconds;
const lat = [];
const states = {};
let next = 0;
let total = 0;

async function worker() {
  while (performance.now() < until) {
    const s = performance.now();
    const state = await start(next++);
    const e = performance.now();
    total++;
    if (e >= from && e <= until) {
      lat.push(e - s);
      states[state] = (states[state] || 0) + 1;
    }
  }
}
await Promise.all(Array.from({ length: conc }, worker));
agent.destroy();

lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.ceil(p * lat.length) - 1)] : NaN);
const ok = (states.completed || 0) + (states.compensated || 0);
console.log(JSON.stringify({
  system, concurrency: conc, seconds: seconds / 1000,
  sagas: lat.length, total, perSecond: +(ok / (seconds / 1000)).toFixed(1),
  p50: +q(0.5).toFixed(2), p99: +q(0.99).toFixed(2), max: +q(1).toFixed(2), states,
}));
