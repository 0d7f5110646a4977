"""`billing`: receives `orders.placed` events from its sidecar as HTTP POSTs.

Run it under a sidecar: `ieum run --service billing --app-port 8081 -- python3 billing.py 8081`.
Answer 2xx to acknowledge; `{"status": "RETRY"}` (or a 5xx) to get the event again later.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Billing(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)) or 0)
        h = self.headers
        print(
            f"{self.path}: event {h['ce-id']} type {h['ce-type']} from {h['ce-source']}"
            f" correlation {h.get('ce-correlationid')} attempt {h['ieum-attempt']}: {body.decode()}",
            flush=True,
        )
        order = json.loads(body or b"{}")
        # Orders marked "flaky" are refused once, to show a redelivery.
        retry = order.get("flaky") and h["ieum-attempt"] == "1"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"status": "RETRY" if retry else "SUCCESS"}).encode())

    def do_GET(self):
        # No subscriptions declared by the app: they come from events.yaml.
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Billing).serve_forever()
