#!/usr/bin/env python3
"""An export as a client sees it, for benchmarks: POSTs a query definition to the handler's
`$alt-export`, polls the status URL at the `Retry-After` the handler gives, and prints the
time from the POST to the 200 (the manifest), with the resources the manifest counts.

  export-client.py HANDLER_URL DEFINITION.json
"""
import json, sys, time, urllib.parse, urllib.request
from datetime import datetime

handler = sys.argv[1].rstrip("/")
definition = open(sys.argv[2], "rb").read()

start = time.time()
request = urllib.request.Request(f"{handler}/$alt-export", data=definition, method="POST")
with urllib.request.urlopen(request, timeout=60) as r:
    status_url = urllib.parse.urljoin(f"{handler}/", r.headers["Content-Location"])
polls = 0
while True:
    polls += 1
    with urllib.request.urlopen(status_url, timeout=60) as r:
        if r.status == 200:
            manifest = json.load(r)
            break
        wait = float(r.headers.get("Retry-After") or 1)
    time.sleep(wait)
secs = time.time() - start
resources = sum(o.get("count", 0) for o in manifest.get("output", []))
errors = len(manifest.get("error", []))
x = manifest.get("extension", {})
at = lambda k: datetime.fromisoformat(x[k][:26].rstrip("Z")) if x.get(k) else None
phases = ""
if at("started") and at("finished"):
    since = lambda k: f"{(at(k) - at('started')).total_seconds():.2f}s" if at(k) else "-"
    phases = f" (planned {since('planned')}, composing {since('composeStarted')}, finished {since('finished')})"
print(f"handler export: {resources} resources in {secs:.2f}s, {polls} polls, {errors} errors{phases}")
