"""`orders`: takes `POST /orders` and publishes `orders.placed` through its sidecar.

Run it under a sidecar: `ieum run --service orders --app-port 8082 -- python3 orders.py 8082`.
The sidecar gives it `IEUM_OUTBOUND`; a 204 from the sidecar means the broker stored the event.
"""
import json
import os
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

OUTBOUND = os.environ["IEUM_OUTBOUND"]


class Orders(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)) or 0)
        order = json.loads(body or b"{}")
        req = urllib.request.Request(
            f"{OUTBOUND}/v1/publish/bus/orders.placed",
            data=json.dumps(order).encode(),
            method="POST",
            headers={
                "content-type": "application/json",
                "ce-type": "com.example.order.placed",
                # One business transaction, followed in the UI under Topics.
                "ce-correlationid": f"order-{order.get('id', 'unknown')}",
            },
        )
        try:
            with urllib.request.urlopen(req) as res:
                status, answer = res.status, res.headers.get("ieum-event-id", "")
        except urllib.error.HTTPError as e:
            status, answer = e.code, e.read().decode()
        self.send_response(202 if status == 204 else 502)
        self.end_headers()
        self.wfile.write(f"publish: {status} {answer}\n".encode())

    def do_GET(self):
        self.send_response(200)
        self.end_headers()


HTTPServer(("127.0.0.1", int(sys.argv[1])), Orders).serve_forever()
