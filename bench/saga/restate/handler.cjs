// The same 3-step saga as ieum's `bench` Saga, as a Restate service (Restate's saga
// pattern): each participant call runs in `ctx.run` (its result is journaled before the
// handler goes on); when an action fails terminally (a 4xx other than 408/429), the
// compensations of the steps already done run in reverse, each in its own `ctx.run`.
// Other failures (connection errors, 408, 429, 5xx) are thrown as retryable errors, so
// Restate retries them, as ieum's coordinator does.
//   NODE_PATH=$HOME/.cache/ieum/restate/node_modules node handler.cjs PORT PARTICIPANTS_PORT
if (typeof Promise.withResolvers !== "function") {
  // Node 20 lacks it; the SDK uses it.
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}
const http = require("node:http");
const restate = require("@restatedev/restate-sdk");

const port = Number(process.argv[2] || 9080);
const target = Number(process.argv[3] || 9701);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

function call(path, key, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(
      {
        host: "127.0.0.1", port: target, path, method: "POST", agent,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(data), "idempotency-key": key },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          const s = res.statusCode;
          if (s >= 200 && s < 300) resolve({ status: s, body: JSON.parse(text || "null") });
          else if (s >= 500 || s === 408 || s === 429) reject(new Error(`${path}: ${s}`));
          else reject(new restate.TerminalError(`${path}: ${s} ${text}`, { errorCode: s }));
        });
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

const bench = restate.service({
  name: "Bench",
  handlers: {
    run: async (ctx, input) => {
      const id = ctx.request().id;
      const done = [];
      try {
        for (const step of [1, 2, 3]) {
          await ctx.run(`a${step}`, () => call(`/a${step}`, `${id}:${step}:action`, { step, input }));
          done.push(step);
        }
      } catch (e) {
        if (!(e instanceof restate.TerminalError)) throw e;
        for (const step of done.reverse()) {
          await ctx.run(`c${step}`, () => call(`/c${step}`, `${id}:${step}:compensation`, { step }));
        }
        return { state: "compensated" };
      }
      return { state: "completed" };
    },
  },
});

restate.endpoint().bind(bench).listen(port).then((p) => console.error(`restate handler on :${p}`));
