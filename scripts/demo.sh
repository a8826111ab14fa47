#!/usr/bin/env bash
# README command 1: the main job end to end on the embedded default.
# Installs what is missing, builds the handler, starts Azurite + the sekmet FHIR server +
# `handler serve` from a clean state, generates synthetic patients with carebundle, uploads
# them through the Blob API as transaction Bundles, NDJSON and a zip, waits until every file
# is imported, and prints what landed per resource type, the failures and resources/second;
# then exports the older patients with $alt-export and prints the manifest's files.
# The stack stays up for exploration; stop it with scripts/stack-down.sh.
# Env: PATIENTS (default 100).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PATIENTS=${PATIENTS:-100}
CAREBUNDLE=.tools/carebundle/bin/carebundle

scripts/install.sh
cargo build --release --quiet
scripts/stack-down.sh >/dev/null
rm -rf .stack
scripts/stack-up.sh

export FHIRBULK_STORAGE_CONNECTION_STRING=UseDevelopmentStorage=true
export FHIRBULK_FHIR_URL=http://127.0.0.1:8090/fhir
HANDLER=target/release/handler
DATA=.stack/sample-data
rm -rf "$DATA" && mkdir -p "$DATA"
half=$(( (PATIENTS + 1) / 2 ))
echo "Generating $PATIENTS synthetic patients with carebundle ..."
"$CAREBUNDLE" generate --profile mixed --count "$half" --sex mixed --age-range 30-90 --seed 7 --out "$DATA/bundles" >/dev/null
"$CAREBUNDLE" generate --profile mixed --count $(( PATIENTS - half )) --sex mixed --age-range 30-90 --seed 11 --format ndjson --out "$DATA/ndjson" >/dev/null
"$CAREBUNDLE" generate --profile mixed --count 10 --sex mixed --age-range 30-90 --seed 13 --out "$DATA/zipped" >/dev/null
(cd "$DATA/zipped" && python3 -c "import zipfile,glob; z=zipfile.ZipFile('../patients.zip','w',zipfile.ZIP_DEFLATED); [z.write(f) for f in sorted(glob.glob('*.json'))]; z.close()")

echo "Uploading through the Blob API ..."
files=0
for f in "$DATA"/bundles/*.json; do "$HANDLER" upload bundles "$f" >/dev/null; files=$((files + 1)); done
for f in "$DATA"/ndjson/*.ndjson; do "$HANDLER" upload ndjson "$f" >/dev/null; files=$((files + 1)); done
"$HANDLER" upload zip "$DATA/patients.zip" >/dev/null; files=$((files + 1))
echo "Uploaded $files files; waiting for the imports ..."
status=0
"$HANDLER" summary --expect "$files" --wait 900 || status=$?

echo
echo "Exporting patients born before 1960 with their Encounters and Observations (\$alt-export) ..."
# shellcheck disable=SC2016 # $IDS is the export placeholder, not a shell variable
definition='{"query": "Patient?birthdate=lt1960-01-01", "patientreferencefield": "id",
  "include": ["Patient?_id=$IDS", "Encounter?patient=$IDS", "Observation?patient=$IDS"]}'
key=${FHIRBULK_API_KEYS:-}
key=${key%%,*}
[ -n "$key" ] || key=$(cat .stack/api-key)
key_header="x-functions-key: $key"
# shellcheck disable=SC2016 # $alt-export is a URL path
export_id=$(curl -sf -H "$key_header" -X POST 'http://127.0.0.1:7071/$alt-export' -d "$definition" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 600); do
  code=$(curl -s -H "$key_header" -o .stack/export-status.json -w '%{http_code}' "http://127.0.0.1:7071/\$alt-export/$export_id")
  [ "$code" = 202 ] || break
  sleep 0.5
done
python3 - .stack/export-status.json "$code" <<'PY' || status=$?
import json, sys
m = json.load(open(sys.argv[1]))
if sys.argv[2] != "200":
    sys.exit(f"export ended with HTTP {sys.argv[2]}: {m}")
x = m["extension"]
print(f"Export {x['id']}: {x['status']}, {x['patients']} patients, {x['resources']} resources")
for f in m["output"]:
    print(f"  {f['type']:<20} {f['count']:>8}  {f['url']}")
for f in m["error"]:
    print(f"  errors: {f['url']}")
PY
cat <<EOT

The stack is still running for exploration (every route but /health asks for the key):
  key=\$(cat .stack/api-key)
  curl -s -H "x-functions-key: \$key" http://127.0.0.1:7071/imports            # every import
  curl -s -H "x-functions-key: \$key" 'http://127.0.0.1:7071/\$alt-export-status'   # every export
  curl -s -H "x-functions-key: \$key" "http://127.0.0.1:7071/\$alt-export/$export_id"   # its manifest
  curl -s 'http://127.0.0.1:8090/fhir/Patient?_count=5'
Stop it with: scripts/stack-down.sh
EOT
exit $status
