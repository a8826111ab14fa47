#!/usr/bin/env python3
"""Synthetic FHIR data for benchmarks (standard library only; deterministic).

  gen-data.py ndjson OUT.ndjson COUNT [PAD]   Observation lines (~PAD bytes of text each, default 700)
  gen-data.py small-bundles OUTDIR COUNT      COUNT transaction Bundles of 1-10 resources each
"""
import json, os, sys


def observation(i, pad):
    return {"resourceType": "Observation", "id": f"bench-obs-{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                     "text": "x" * pad},
            "subject": {"reference": f"Patient/bench-p-{i % 10000}"},
            "effectiveDateTime": "2024-01-01T00:00:00Z",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def ndjson(out, count, pad):
    with open(out, "w") as f:
        for i in range(count):
            f.write(json.dumps(observation(i, pad), separators=(",", ":")))
            f.write("\n")


def small_bundles(outdir, count):
    os.makedirs(outdir, exist_ok=True)
    for b in range(count):
        n = 1 + b % 10
        pid = f"00000000-0000-4000-8000-{b:012d}"
        entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "name": [{"family": f"B{b}"}]},
                    "request": {"method": "POST", "url": "Patient"}}]
        for i in range(n - 1):
            o = observation(b * 10 + i, 50)
            o.pop("id")
            o["subject"] = {"reference": f"urn:uuid:{pid}"}
            entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-9000-{b * 10 + i:012d}", "resource": o,
                            "request": {"method": "POST", "url": "Observation"}})
        with open(os.path.join(outdir, f"small-{b:06d}.json"), "w") as f:
            json.dump({"resourceType": "Bundle", "type": "transaction", "entry": entries}, f, separators=(",", ":"))


if __name__ == "__main__":
    kind, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "ndjson":
        ndjson(out, count, int(sys.argv[4]) if len(sys.argv) > 4 else 700)
    elif kind == "small-bundles":
        small_bundles(out, count)
    else:
        sys.exit(__doc__)
