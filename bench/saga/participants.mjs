// The saga benchmark's participants: one HTTP/1.1 server answering the three actions
// (POST /a1 /a2 /a3) and their compensations (POST /c1 /c2 /c3) at once. The third action
// fails with a 409 (a business failure: not retried, no compensation of its own) for the
// configured share of calls, spread evenly: call n fails when floor((n+1)·share) >
// floor(n·share), so 20 % is exactly every fifth call whatever the concurrency.
//   node participants.mjs PORT
//   POST /config?fail=0.2   sets the share and zeroes the counters
//   GET  /stats             counts per path
import http from "node:http";

const port = Number(process.argv[2] || 9701);
let share = 0;
let third = 0;
let counts = {};

const server = http.createServer((req, res) => {
  const url = req.url;
  if (url.startsWith("/config")) {
    share = Number(new URL(url, "http://x").searchParams.get("fail") || 0);
    third = 0;
    counts = {};
    res.end(JSON.stringify({ share }));
    return;
  }
  if (url === "/stats") {
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ share, counts }));
    return;
  }
  // Drain the body (the coordinators send small JSON bodies), then answer.
  req.resume();
  req.on("end", () => {
    counts[url] = (counts[url] || 0) + 1;
    res.setHeader("content-type", "application/json");
    if (url === "/a3") {
      const n = third++;
      if (Math.floor((n + 1) * share) > Math.floor(n * share)) {
        res.statusCode = 409;
        res.end('{"error":"no courier free"}');
        return;
      }
    }
    res.end('{"ok":true}');
  });
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 121_000;
server.listen(port, "127.0.0.1", () => console.error(`participants on 127.0.0.1:${port}`));
