#!/usr/bin/env python3
"""Synthetic FHIR data for benchmarks (standard library only; deterministic).

  gen-data.py ndjson OUT.ndjson COUNT [PAD] [TAG]   Observation lines (~PAD bytes of text, default 700;
                                                    ids bench-obs-TAG-N when TAG is given)
  gen-data.py small-bundles OUTDIR COUNT      COUNT transaction Bundles of 1-10 resources each
  gen-data.py big-bundles OUTDIR COUNT [SIZE]  COUNT transaction Bundles of SIZE entries (default 2000):
                                              a Patient, an Encounter and Observations, urn:uuid references
"""
import json, os, sys


def observation(i, pad, tag=""):
    return {"resourceType": "Observation", "id": f"bench-obs-{tag + '-' if tag else ''}{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                     "text": "x" * pad},
            "subject": {"reference": f"Patient/bench-p-{i % 10000}"},
            "effectiveDateTime": "2024-01-01T00:00:00Z",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}


def ndjson(out, count, pad, tag=""):
    with open(out, "w") as f:
        for i in range(count):
            f.write(json.dumps(observation(i, pad, tag), separators=(",", ":")))
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


def big_bundles(outdir, count, size):
    os.makedirs(outdir, exist_ok=True)
    for b in range(count):
        pid = f"00000000-0000-4000-a000-{b:012d}"
        enc = f"00000000-0000-4000-b000-{b:012d}"
        entries = [
            {"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "name": [{"family": f"Big{b}"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": f"urn:uuid:{enc}", "resource": {"resourceType": "Encounter", "status": "finished",
                                                       "subject": {"reference": f"urn:uuid:{pid}"}},
             "request": {"method": "POST", "url": "Encounter"}},
        ]
        for i in range(size - 2):
            o = observation(i, 300)
            o.pop("id")
            o["subject"] = {"reference": f"urn:uuid:{pid}"}
            o["encounter"] = {"reference": f"urn:uuid:{enc}"}
            entries.append({"fullUrl": f"urn:uuid:{b:08d}-0000-4000-c000-{i:012d}", "resource": o,
                            "request": {"method": "POST", "url": "Observation"}})
        with open(os.path.join(outdir, f"big-{b:04d}.json"), "w") as f:
            json.dump({"resourceType": "Bundle", "type": "transaction", "entry": entries}, f, separators=(",", ":"))


if __name__ == "__main__":
    kind, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "ndjson":
        ndjson(out, count, int(sys.argv[4]) if len(sys.argv) > 4 else 700, sys.argv[5] if len(sys.argv) > 5 else "")
    elif kind == "small-bundles":
        small_bundles(out, count)
    elif kind == "big-bundles":
        big_bundles(out, count, int(sys.argv[4]) if len(sys.argv) > 4 else 2000)
    else:
        sys.exit(__doc__)
