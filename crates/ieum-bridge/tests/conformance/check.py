"""Parses the HTTP messages ieum emits with the CloudEvents Python SDK (1.x) and checks
that every attribute and the data round-trip.

Reads JSON lines on stdin: {"name", "headers": {..}, "body_b64", "attributes": {..},
"data_b64" (or null)}. Prints one line per case and exits 1 on any mismatch.
"""
import base64
import json
import sys
from datetime import datetime
from urllib.parse import unquote

from cloudevents.http import from_http


def is_json(content_type):
    if content_type is None:
        return True
    essence = content_type.split(";")[0].strip().lower()
    return essence in ("application/json", "text/json") or essence.endswith("+json")


failures = 0
cases = 0
for line in sys.stdin:
    case = json.loads(line)
    cases += 1
    body = base64.b64decode(case["body_b64"])
    try:
        event = from_http(case["headers"], body)
    except Exception as e:  # noqa: BLE001 - report any SDK rejection as a failure
        print(f"FAIL {case['name']}: the SDK rejected it: {e!r}")
        failures += 1
        continue
    got = {k: str(v) for k, v in event.get_attributes().items()}
    if case["binary"]:
        # HTTP binding 1.0.2 (3.1.3.2) percent-encodes header values; SDK 1.x predates
        # that rule and hands values over as sent, so decoding is the reader's part.
        got = {k: unquote(v) if k not in ("datacontenttype",) else v for k, v in got.items()}
    want = case["attributes"]
    problems = []
    for key in sorted(set(got) | set(want)):
        if key == "time" and key in got and key in want:
            # The SDK re-renders time as a datetime; compare instants, not spelling.
            g = datetime.fromisoformat(got.get(key, "").replace("Z", "+00:00"))
            w = datetime.fromisoformat(want.get(key, "").replace("Z", "+00:00"))
            if g != w:
                problems.append(f"time: {got.get(key)!r} != {want.get(key)!r}")
        elif got.get(key) != want.get(key):
            problems.append(f"{key}: {got.get(key)!r} != {want.get(key)!r}")
    want_data = None if case["data_b64"] is None else base64.b64decode(case["data_b64"])
    data = event.data
    if want_data is None:
        if data not in (None, b"", ""):
            problems.append(f"data: {data!r} != None")
    elif is_json(want.get("datacontenttype")):
        if data != json.loads(want_data):
            problems.append(f"data: {data!r} != {json.loads(want_data)!r}")
    else:
        if isinstance(data, str):
            data = data.encode()
        if data != want_data:
            problems.append(f"data: {data!r} != {want_data!r}")
    if problems:
        failures += 1
        print(f"FAIL {case['name']}: " + "; ".join(problems))
    else:
        print(f"ok {case['name']}")

print(f"{cases - failures} passed, {failures} failed")
sys.exit(1 if failures or cases == 0 else 0)
