#!/usr/bin/env python3
"""An ideal export client for benchmarks: runs an export definition's searches directly against
a FHIR server (page the query for patient ids, batch the ids under the same URL limit, page every
batch x include with THREADS concurrent readers), with no storage or state in between, and
prints resources/second: the ceiling `$alt-export` is compared with on the same server.

  export-baseline.py BASE_URL DEFINITION.json [THREADS=4] [MAX_URL=4096] [PAGE_SIZE=500] [IDS=0]

IDS: most ids per search (0: as many as the URL limit allows). A query that returns a Group
contributes its members, as the loader's gather does.
"""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

base = sys.argv[1].rstrip("/")
definition = json.load(open(sys.argv[2]))
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
max_url = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
page_size = int(sys.argv[5]) if len(sys.argv) > 5 else 500
max_ids = int(sys.argv[6]) if len(sys.argv) > 6 else 0


def with_count(search):
    if "_count=" in search:
        return f"{base}/{search}"
    return f"{base}/{search}{'&' if '?' in search else '?'}_count={page_size}"


def pages(url):
    while url:
        with urllib.request.urlopen(url, timeout=300) as r:
            page = json.load(r)
        yield page
        url = next((l["url"] for l in page.get("link", []) if l.get("relation") == "next"), None)


def fetch(url):
    return sum(len([e for e in p.get("entry", []) if "resource" in e]) for p in pages(url))


start = time.time()
ids, seen = [], set()
field = definition["patientreferencefield"]
for page in pages(with_count(definition["query"])):
    entries = page.get("entry", []) if page.get("resourceType") == "Bundle" else [{"resource": page}]
    for e in entries:
        r = e.get("resource", {})
        if r.get("resourceType") == "Group":
            found = [m.get("entity", {}).get("reference", "").split("/")[-1] for m in r.get("member", [])]
        elif field == "id":
            found = [r.get("id")]
        else:
            found = [(r.get(field) or {}).get("reference", "").split("/")[-1]]
        for pid in found:
            if pid and pid not in seen:
                seen.add(pid)
                ids.append(pid)
overhead = len(base) + 1 + len(f"&_count={page_size}")
longest = max(len(i) - len("$IDS") for i in definition["include"])
batches, current = [], []
for pid in ids:
    full = max_ids and len(current) >= max_ids
    if current and (full or overhead + longest + len(",".join(current + [pid])) > max_url):
        batches.append(current)
        current = []
    current.append(pid)
if current:
    batches.append(current)
urls = [with_count(inc.replace("$IDS", ",".join(b))) for b in batches for inc in definition["include"]]
with ThreadPoolExecutor(threads) as pool:
    total = sum(pool.map(fetch, urls))
secs = time.time() - start
print(f"ideal export client: {len(ids)} patients, {len(urls)} searches, {total} resources in {secs:.2f}s: {total / secs:.0f} resources/second ({threads} threads)")
