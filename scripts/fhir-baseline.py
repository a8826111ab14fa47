#!/usr/bin/env python3
"""An ideal client for benchmarks: posts an NDJSON file to a FHIR server as batch Bundles of
PUT entries with THREADS concurrent posters, with no storage, ledger or retries in between.
Prints resources/second, the ceiling the loader is compared with on the same server.

  fhir-baseline.py BASE_URL FILE.ndjson [PER_BUNDLE=200] [THREADS=4]
"""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

base, path = sys.argv[1].rstrip("/"), sys.argv[2]
per_bundle = int(sys.argv[3]) if len(sys.argv) > 3 else 200
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4


def batches():
    batch = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            batch.append({"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}})
            if len(batch) == per_bundle:
                yield batch
                batch = []
    if batch:
        yield batch


def post(entries):
    body = json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}).encode()
    req = urllib.request.Request(base, data=body, method="POST", headers={
        "Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()
    return len(entries)


start = time.time()
with ThreadPoolExecutor(threads) as pool:
    total = sum(pool.map(post, batches()))
secs = time.time() - start
print(f"baseline: {total} resources in {secs:.1f}s: {total / secs:.0f} resources/second ({threads} threads, {per_bundle} per batch)")
