#!/usr/bin/env bash
# Import and export benchmarks on this machine; results go to stdout (copy them into BENCHMARKS.md).
#   scripts/bench.sh            all cases
#   scripts/bench.sh CASE ...   some of: ndjson-sink gz-sink big-lines-sink zip-sink zip-small-sink
#                               zip-huge-sink big-bundles-sink huge-bundles-sink bundles-sink small-files
#                               ndjson-real bundles-real zip-bundles-real export-real export-e2e
#                               storage-costs group-memory
# Each case runs the release `handler serve` against a fresh Azurite, and either the null FHIR
# sink (the loader's own speed) or the sekmet FHIR server. Reported per case: resources loaded,
# resources/second (first part started to last file finished, from the imports ledger), peak
# RSS (VmHWM) and CPU time per resource of the handler process.
# export-real loads EXPORT_PATIENTS carebundle patients into sekmet, then runs an `$alt-export`
# of all of them (six includes) and, on the same server in the same run, the same searches by an
# ideal client (scripts/export-baseline.py): resources/second of both, peak RSS and CPU/resource.
# export-e2e measures exports as a client sees them (scripts/export-client.py: POST to the 200,
# polling at the handler's Retry-After) of Groups of EXPORT_E2E_SIZES (10 40 300 1000) of the
# EXPORT_E2E_PATIENTS (1000) patients loaded into sekmet, with six includes with `&_count=50`
# (fhir-loader's style) and without, against the ideal client with 4 threads and 20 ids per
# search on the same server, alternating EXPORT_E2E_ROUNDS (3) rounds; prints both times and
# the speed ratio (ideal seconds / handler seconds: above 1.0 the loader is faster), then the
# median ratio of each case.
# gz-sink is a gzip NDJSON file (GZ_LINES, default 400000), which is read as one stream;
# big-lines-sink a gzip NDJSON of BIG_LINES (300) lines of ~1 MB each, like DocumentReferences
# with their attachments inline: memory must stay bounded however large the lines.
# Env: NDJSON_LINES (default 1500000, ~1.5 GB), ZIP_LINES (800000, ~800 MB), HUGE_BUNDLES (40
# Bundles of 10,000 entries), SMALL_FILES (1000;
# Azurite's tables slow down as they grow, so far larger counts measure the emulator),
# EXPORT_PATIENTS (300), EXPORT_ROUNDS (5: ideal client and handler export alternate, each
# round prints both and their ratio, then the median ratio), AZURITE_ARGS (extra Azurite options),
# SINK_DELAY_MS (0: the sink answers each batch after this long, like a distant FHIR server).
# group-memory plans an `$alt-export` of a Group of GROUP_MEMBERS (10000000) patients, read from
# the null sink (which generates the Group as it sends it), with one include and 1,000 ids per
# search (10,000 work items: Azurite's table slows down past a few tens of thousands of rows),
# one queue worker (the planning step alone): seconds from POST until the export is planned
# (every work item registered and queued) and the handler's peak RSS over that time. The
# searches that follow are not measured.
# storage-costs measures what each kind of storage request the importer makes costs Azurite
# (CPU ms per request, and per MiB of ranged reads by range size): the bound on files/hour here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CASES=${*:-ndjson-sink gz-sink big-lines-sink zip-sink zip-small-sink zip-huge-sink big-bundles-sink huge-bundles-sink bundles-sink small-files ndjson-real bundles-real zip-bundles-real export-real export-e2e storage-costs group-memory}
EXPORT_PATIENTS=${EXPORT_PATIENTS:-300}
EXPORT_ROUNDS=${EXPORT_ROUNDS:-5}
NDJSON_LINES=${NDJSON_LINES:-1500000}
ZIP_LINES=${ZIP_LINES:-800000}
GZ_LINES=${GZ_LINES:-400000}
BIG_LINES=${BIG_LINES:-300}
SMALL_FILES=${SMALL_FILES:-1000}
HUGE_BUNDLES=${HUGE_BUNDLES:-40}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/fhir-bulk-bench.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

scripts/install.sh
cargo build --release --quiet --bins
HANDLER=${BENCH_HANDLER:-$ROOT/target/release/handler} # BENCH_HANDLER: another build, for A/B runs
CLK_TCK=$(getconf CLK_TCK)

SINK_PORT=31090; FHIR_PORT=31091; HANDLER_PORT=31071
target/release/fhir-null-sink "$SINK_PORT" "${SINK_DELAY_MS:-0}" & SINK_PID=$!; PIDS+=("$SINK_PID")
sink_url=http://127.0.0.1:$SINK_PORT/fhir

fhir_url=""
declare -A FHIR_PIDS # FHIR server URL -> its PID
start_fhir() {
  [ -n "$fhir_url" ] && return
  STATE_DIR="$WORK/fhir" FHIR_PORT=$FHIR_PORT FHIR_VALIDATION=off scripts/fhir-up.sh > "$WORK/fhir.pid"
  fhir_url=http://127.0.0.1:$FHIR_PORT/fhir
  FHIR_PIDS[$fhir_url]=$(cat "$WORK/fhir.pid"); PIDS+=("${FHIR_PIDS[$fhir_url]}")
}

# run_case NAME CONTAINER PATH FHIR_URL FILES
run_case() {
  local name=$1 container=$2 path=$3 url=$4 files=$5
  local azurite_pid services; start_azurite
  export FHIRBULK_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:31000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:31001/devstoreaccount1;TableEndpoint=http://127.0.0.1:31002/devstoreaccount1;"
  export FHIRBULK_FHIR_URL=$url FUNCTIONS_CUSTOMHANDLER_PORT=$HANDLER_PORT RUST_LOG=warn
  "$HANDLER" upload "$container" "$path" > /dev/null
  # Start the handler after the upload, so the measurement is the import alone.
  local side_pid=$SINK_PID
  [ "$url" = "$sink_url" ] || side_pid=${FHIR_PIDS[$url]}
  local before; before=$(cpu_ticks "${services[@]}" "$side_pid")
  "$HANDLER" serve > "$WORK/handler-$name.log" 2>&1 &
  local hpid=$!; PIDS+=("$hpid")
  local peak=0 out
  out=$("$HANDLER" summary --expect "$files" --wait 3600 2>&1 &
        spid=$!
        while kill -0 "$spid" 2>/dev/null; do
          rss=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status" 2>/dev/null || echo 0)
          echo "$rss" > "$WORK/peak.$name"
          sleep 0.5
        done; wait "$spid") || true
  peak=$(cat "$WORK/peak.$name" 2>/dev/null || echo 0)
  local ticks; ticks=$(cpu_ticks "$hpid")
  local after; after=$(cpu_ticks "${services[@]}" "$side_pid")
  kill "$hpid" 2>/dev/null || true
  wait "$hpid" 2>/dev/null || true
  stop_azurite "$azurite_pid"
  local loaded rate secs
  loaded=$(echo "$out" | sed -n 's/.*Resources loaded: \([0-9]*\).*/\1/p')
  rate=$(echo "$out" | sed -n 's/.*: \([0-9]*\) resources\/second.*/\1/p')
  secs=$(echo "$out" | sed -n 's/^Load time \([0-9.]*\)s.*/\1/p')
  local cpu_us="n/a"
  [ -n "$loaded" ] && [ "$loaded" -gt 0 ] && cpu_us=$(( ticks * 1000000 / CLK_TCK / loaded ))
  printf '%-14s files=%-6s resources=%-9s seconds=%-7s resources/s=%-7s files/hour=%-8s peak_rss_mb=%-5s cpu_us/resource=%s\n' \
    "$name" "$files" "${loaded:-?}" "${secs:-?}" "${rate:-?}" \
    "$(awk -v f="$files" -v s="${secs:-0}" 'BEGIN { if (s > 0) printf "%d", f * 3600 / s; else print "?" }')" \
    "$((peak / 1024))" "$cpu_us"
  echo "$out" | grep -E "with failures|Load time" | sed 's/^/    /' || true
  # Where the two cores went while the handler ran: the handler, Azurite (its blob, queue and
  # table processes, summed, then each), and the FHIR side.
  if [ -n "$secs" ]; then
    awk -v h="$ticks" -v b="$before" -v a="$after" -v s="$secs" -v t="$CLK_TCK" 'BEGIN {
      split(b, x, " "); split(a, y, " "); for (i = 1; i <= 4; i++) d[i] = (y[i] - x[i]) / t / s
      printf "    CPU while importing (cores busy): handler %.2f, Azurite %.2f, FHIR side %.2f\n", h/t/s, d[1] + d[2] + d[3], d[4]
      printf "    Azurite per service (cores busy): blob %.2f, queue %.2f, table %.2f\n", d[1], d[2], d[3] }'
  fi
}

# start_azurite: a fresh Azurite on the bench's ports; sets azurite_pid (its supervisor) and
# services (the PIDs of its blob, queue and table processes).
start_azurite() {
  rm -rf "$WORK/azurite"
  STATE_DIR="$WORK/azurite" AZURITE_BLOB_PORT=31000 AZURITE_QUEUE_PORT=31001 AZURITE_TABLE_PORT=31002 \
    scripts/azurite-up.sh > "$WORK/azurite.pid"
  azurite_pid=$(cat "$WORK/azurite.pid"); PIDS+=("$azurite_pid")
  read -r -a services < "$WORK/azurite/services.pid"
}

# stop_azurite PID: stops the Azurite azurite-up.sh started and waits until its ports are free.
stop_azurite() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

# cpu_ticks PID...: user + system clock ticks of each process so far, space-separated.
cpu_ticks() {
  local p; for p in "$@"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat" 2>/dev/null || printf '0 '; done
}

# loaded_fhir NAME PORT PATIENTS SEED: a fresh sekmet server of its own on PORT, holding
# PATIENTS carebundle patients (generated once with SEED) loaded through the importer (case
# NAME-load); sets url to its base URL.
loaded_fhir() {
  local name=$1 port=$2 patients=$3 seed=$4
  rm -rf "$WORK/fhir-$name"
  STATE_DIR="$WORK/fhir-$name" FHIR_PORT=$port FHIR_VALIDATION=off scripts/fhir-up.sh > "$WORK/fhir-$name.pid"
  url=http://127.0.0.1:$port/fhir
  FHIR_PIDS[$url]=$(cat "$WORK/fhir-$name.pid"); PIDS+=("${FHIR_PIDS[$url]}")
  [ -d "$WORK/$name-patients" ] || .tools/carebundle/bin/carebundle generate --profile mixed --count "$patients" --sex mixed --age-range 30-90 --seed "$seed" --out "$WORK/$name-patients" > /dev/null
  run_case "$name-load" bundles "$WORK/$name-patients" "$url" "$patients"
}

# export_case: loads patients through the importer, then measures exports against the ideal
# client on the same server.
export_case() {
  # A server of its own, holding only the export data.
  local url; loaded_fhir export 31092 "$EXPORT_PATIENTS" 17
  cat > "$WORK/export-definition.json" <<'JSON'
{"query": "Patient", "patientreferencefield": "id",
 "include": ["Patient?_id=$IDS", "Encounter?patient=$IDS", "Observation?patient=$IDS",
             "Condition?patient=$IDS", "DiagnosticReport?patient=$IDS", "MedicationRequest?patient=$IDS"]}
JSON
  # Rounds alternate the ideal client and the handler on the same server, so that the
  # machine's drift over a few minutes reaches both alike; the verdict is the median ratio.
  local ratios=()
  for round in $(seq 1 "$EXPORT_ROUNDS"); do
    local ideal handler
    ideal=$(python3 scripts/export-baseline.py "$url" "$WORK/export-definition.json" 4)
    handler=$(export_once "$url")
    local ratio
    ratio=$(python3 -c 'import re,sys; h=float(re.search(r"resources/s=(\d+)", sys.argv[1])[1]); i=float(re.search(r": (\d+) resources/second", sys.argv[2])[1]); print(round(100*h/i))' "$handler" "$ideal")
    ratios+=("$ratio")
    echo "export-real    round $round: ${handler#export-real    }"
    echo "    $ideal"
    echo "    handler/ideal: $ratio %"
  done
  echo "export-real    median handler/ideal over $EXPORT_ROUNDS rounds: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}') %"
}

# export_e2e_case: exports of Groups of several sizes, timed as a client sees them, against the
# ideal 4-thread client with 20 ids per search; one handler and Azurite for every export.
export_e2e_case() {
  local sizes patients=${EXPORT_E2E_PATIENTS:-1000}
  read -r -a sizes <<< "${EXPORT_E2E_SIZES:-10 40 300 1000}"
  local rounds=${EXPORT_E2E_ROUNDS:-3}
  local url; loaded_fhir e2e 31093 "$patients" 23
  # One Group per size, of the first patients the server lists.
  python3 - "$url" "${sizes[@]}" <<'PY'
import json, sys, urllib.request
base, sizes = sys.argv[1], [int(n) for n in sys.argv[2:]]
ids, url = [], f"{base}/Patient?_count=500&_elements=id"
while url and len(ids) < max(sizes):
    page = json.load(urllib.request.urlopen(url))
    ids += [e["resource"]["id"] for e in page.get("entry", [])]
    url = next((l["url"] for l in page.get("link", []) if l["relation"] == "next"), None)
for n in sizes:
    group = {"resourceType": "Group", "id": f"e2e-{n}", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/{i}"}} for i in ids[:n]]}
    req = urllib.request.Request(f"{base}/Group/e2e-{n}", data=json.dumps(group).encode(), method="PUT",
                                 headers={"Content-Type": "application/fhir+json"})
    urllib.request.urlopen(req).read()
PY
  local azurite_pid services; start_azurite
  export FHIRBULK_FHIR_URL=$url
  "$HANDLER" serve > "$WORK/handler-e2e.log" 2>&1 &
  local hpid=$!; PIDS+=("$hpid")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HANDLER_PORT/health" > /dev/null && break; sleep 0.1; done
  local n count
  for n in "${sizes[@]}"; do
    for count in "&_count=50" ""; do
      python3 - "$n" "$count" > "$WORK/e2e-definition.json" <<'PY'
import json, sys
n, count = sys.argv[1], sys.argv[2]
types = ["Patient?_id", "Encounter?patient", "Observation?patient", "Condition?patient",
         "DiagnosticReport?patient", "MedicationRequest?patient"]
print(json.dumps({"query": f"Group/e2e-{n}", "patientreferencefield": "id",
                  "include": [f"{t}=$IDS{count}" for t in types]}))
PY
      local ratios=() round
      for round in $(seq 1 "$rounds"); do
        local ideal handler
        ideal=$(python3 scripts/export-baseline.py "$url" "$WORK/e2e-definition.json" 4 4096 500 20)
        handler=$(python3 scripts/export-client.py "http://127.0.0.1:$HANDLER_PORT" "$WORK/e2e-definition.json")
        ratios+=("$(python3 -c 'import re,sys; h=float(re.search(r" in ([\d.]+)s", sys.argv[1])[1]); i=float(re.search(r" in ([\d.]+)s", sys.argv[2])[1]); print(f"{i / h:.2f}")' "$handler" "$ideal")")
        echo "export-e2e     patients=$n count=${count:-none} round $round: $handler | $ideal"
      done
      echo "export-e2e     patients=$n count=${count:-none} median speed ratio (ideal s / handler s) over $rounds rounds: $(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
    done
  done
  kill "$hpid" 2>/dev/null || true
  wait "$hpid" 2>/dev/null || true
  stop_azurite "$azurite_pid"
}

# export_once URL: one `$alt-export` of the definition on a fresh Azurite and handler; prints
# the handler's figures (and its phases on a second line).
export_once() {
  local url=$1
  local azurite_pid services; start_azurite
  export FHIRBULK_FHIR_URL=$url
  # Info logs: the export's time runs from "Export started." to "Export completed." (the
  # start request to the job row saying so).
  RUST_LOG=info "$HANDLER" serve > "$WORK/handler-export.log" 2>&1 &
  local hpid=$!; PIDS+=("$hpid")
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HANDLER_PORT/health" > /dev/null && break; sleep 0.1; done
  local id status="" peak=0
  id=$(curl -sf -X POST "http://127.0.0.1:$HANDLER_PORT/\$alt-export" --data-binary @"$WORK/export-definition.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  while :; do
    status=$(curl -s -o "$WORK/export-status.json" -w '%{http_code}' "http://127.0.0.1:$HANDLER_PORT/\$alt-export/$id")
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status")
    [ "$status" = 202 ] || break
    sleep 1 # (Retry-After says 5 s; the time is read from the log, not from the polls)
  done
  local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$hpid/stat")
  kill "$hpid" 2>/dev/null || true
  wait "$hpid" 2>/dev/null || true
  stop_azurite "$azurite_pid"
  python3 - "$WORK/export-status.json" "$status" "$((peak / 1024))" "$ticks" "$CLK_TCK" "$WORK/handler-export.log" <<'PY'
import json, re, sys
from datetime import datetime
m = json.load(open(sys.argv[1])); x = m.get("extension", {})
if sys.argv[2] != "200":
    sys.exit(f"export-real: the export ended with HTTP {sys.argv[2]}: {m}")
t = lambda s: datetime.fromisoformat(s[:26].rstrip("Z") if "." in s else s.rstrip("Z"))
log = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[6]).read())
at = lambda event: t(re.search(r"^(\S+)\s+INFO " + re.escape(event), log, re.M)[1])
secs = (at("Export completed.") - at("Export started.")).total_seconds()
n = x["resources"]; cpu = int(sys.argv[4]) * 1e6 / int(sys.argv[5]) / max(n, 1)
phase = lambda a, b: (t(x[b]) - t(x[a])).total_seconds()
print(f"export-real    patients={x['patients']} work_items={x['workItems']} files={len(m['output'])} resources={n} seconds={secs:.1f} resources/s={n / secs:.0f} peak_rss_mb={sys.argv[3]} cpu_us/resource={cpu:.0f}")
print(f"    phases: gather+plan={phase('started', 'planned'):.2f}s searches={phase('planned', 'composeStarted'):.2f}s last compose={phase('composeStarted', 'finished'):.2f}s manifest={(at('Export completed.') - t(x['finished'])).total_seconds():.2f}s")
PY
}

# zip_bundles ZIP DIR: the files of DIR as the entries bundles/<name> of one deflated zip.
zip_bundles() {
  mkdir -p "$(dirname "$1")"
  python3 -c "import os,sys,zipfile; z=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_DEFLATED); [z.write(os.path.join(sys.argv[2],f),'bundles/'+f) for f in sorted(os.listdir(sys.argv[2]))]; z.close()" "$1" "$2"
}

# gzip_ndjson FILE LINES PAD TAG: gen-data.py Observation lines, gzip-compressed into FILE.gz.
gzip_ndjson() {
  mkdir -p "$(dirname "$1")"
  python3 scripts/gen-data.py ndjson "$1" "$2" "$3" "$4"
  gzip -1 "$1"
}

# group_memory_case: see group-memory above.
group_memory_case() {
  local members=${GROUP_MEMBERS:-10000000} port=31093 azurite_pid services
  start_azurite
  target/release/fhir-null-sink "$port" 0 "$members" & local gpid=$!; PIDS+=("$gpid")
  FHIRBULK_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:31000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:31001/devstoreaccount1;TableEndpoint=http://127.0.0.1:31002/devstoreaccount1;" \
    FHIRBULK_FHIR_URL=http://127.0.0.1:$port/fhir FUNCTIONS_CUSTOMHANDLER_PORT=$HANDLER_PORT RUST_LOG=${BENCH_RUST_LOG:-warn} \
    FHIRBULK_API_KEYS="" FHIRBULK_EXPORT_IDS_PER_SEARCH=1000 FHIRBULK_EXPORT_MAX_URL_LENGTH=16384 FHIRBULK_WORKERS=1 \
    "$HANDLER" serve > "$WORK/handler-group-memory.log" 2>&1 &
  local hpid=$!; PIDS+=("$hpid")
  local base=http://127.0.0.1:$HANDLER_PORT
  for _ in $(seq 1 100); do curl -sf "$base/health" > /dev/null && break; sleep 0.2; done
  local started id status="gathering" peak=0 rss
  started=$(date +%s.%N)
  # shellcheck disable=SC2016 # $IDS is the definition's placeholder, not a shell variable
  id=$(curl -sf -X POST "$base/\$alt-export" \
    -d '{"query": "Group/big", "patientreferencefield": "id", "include": ["Patient?_id=$IDS"]}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  while [ "$status" = "gathering" ]; do
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status" 2>/dev/null || echo 0)
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.5
    status=$(curl -s "$base/\$alt-export/$id" | python3 -c 'import json, sys
b = json.load(sys.stdin); print(b.get("status") or b.get("extension", {}).get("status") or "failed")')
  done
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status" 2>/dev/null || echo 0)
  [ "$rss" -gt "$peak" ] && peak=$rss
  local planned; planned=$(date +%s.%N)
  local items; items=$(curl -s "$base/\$alt-export/$id" | python3 -c 'import json, sys
b = json.load(sys.stdin); print(b.get("workItems", {}).get("total") or b.get("extension", {}).get("workItems"))')
  printf 'group-memory   members=%-9s status=%-10s seconds_to_planned=%-7s work_items=%-7s peak_rss_mb=%s\n' \
    "$members" "$status" "$(awk -v a="$started" -v b="$planned" 'BEGIN { printf "%.1f", b - a }')" \
    "$items" "$((peak / 1024))"
  kill "$hpid" "$gpid" 2>/dev/null || true
  wait "$hpid" "$gpid" 2>/dev/null || true
  stop_azurite "$azurite_pid"
}

for c in $CASES; do
  case $c in
    ndjson-sink)
      [ -f "$WORK/big.ndjson" ] || python3 scripts/gen-data.py ndjson "$WORK/big.ndjson" "$NDJSON_LINES"
      echo "ndjson file: $(du -m "$WORK/big.ndjson" | cut -f1) MB, $NDJSON_LINES lines"
      run_case ndjson-sink ndjson "$WORK/big.ndjson" "$sink_url" 1 ;;
    gz-sink)
      [ -f "$WORK/gz/obs.ndjson.gz" ] || gzip_ndjson "$WORK/gz/obs.ndjson" "$GZ_LINES" 700 gz
      echo "gzip file: $(du -m "$WORK/gz/obs.ndjson.gz" | cut -f1) MB, $GZ_LINES lines"
      run_case gz-sink ndjson "$WORK/gz/obs.ndjson.gz" "$sink_url" 1 ;;
    big-lines-sink)
      [ -f "$WORK/big-lines/doc.ndjson.gz" ] || gzip_ndjson "$WORK/big-lines/doc.ndjson" "$BIG_LINES" 1000000 doc
      echo "gzip file: $(du -m "$WORK/big-lines/doc.ndjson.gz" | cut -f1) MB, $BIG_LINES lines of ~1 MB"
      run_case big-lines-sink ndjson "$WORK/big-lines/doc.ndjson.gz" "$sink_url" 1 ;;
    zip-sink)
      [ -f "$WORK/zip/big.zip" ] || {
        mkdir -p "$WORK/zip"
        python3 scripts/gen-data.py ndjson "$WORK/zip-part.ndjson" "$ZIP_LINES"
        python3 -c "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1],'w',zipfile.ZIP_STORED); z.write(sys.argv[2],'data/Observation.ndjson'); z.close()" "$WORK/zip/big.zip" "$WORK/zip-part.ndjson"
        rm "$WORK/zip-part.ndjson"; }
      echo "zip file: $(du -m "$WORK/zip/big.zip" | cut -f1) MB (stored), $ZIP_LINES lines"
      run_case zip-sink zip "$WORK/zip/big.zip" "$sink_url" 1 ;;
    zip-small-sink)
      [ -d "$WORK/small" ] || python3 scripts/gen-data.py small-bundles "$WORK/small" "$SMALL_FILES"
      [ -f "$WORK/zip-small/small.zip" ] || zip_bundles "$WORK/zip-small/small.zip" "$WORK/small"
      echo "zip file: $(du -k "$WORK/zip-small/small.zip" | cut -f1) KB (deflated), $SMALL_FILES Bundle entries"
      run_case zip-small-sink zip "$WORK/zip-small/small.zip" "$sink_url" 1 ;;
    zip-huge-sink)
      # The huge-bundles-sink Bundles in one deflated zip: entries load several at once, and
      # memory must stay bounded all the same.
      [ -d "$WORK/huge-$HUGE_BUNDLES" ] || python3 scripts/gen-data.py big-bundles "$WORK/huge-$HUGE_BUNDLES" "$HUGE_BUNDLES" 10000
      [ -f "$WORK/zip-huge-$HUGE_BUNDLES/huge.zip" ] || zip_bundles "$WORK/zip-huge-$HUGE_BUNDLES/huge.zip" "$WORK/huge-$HUGE_BUNDLES"
      run_case zip-huge-sink zip "$WORK/zip-huge-$HUGE_BUNDLES/huge.zip" "$sink_url" 1 ;;
    big-bundles-sink)
      [ -d "$WORK/big-bundles" ] || python3 scripts/gen-data.py big-bundles "$WORK/big-bundles" 200 2000
      run_case big-bundles-sink bundles "$WORK/big-bundles" "$sink_url" 200 ;;
    huge-bundles-sink)
      [ -d "$WORK/huge-$HUGE_BUNDLES" ] || python3 scripts/gen-data.py big-bundles "$WORK/huge-$HUGE_BUNDLES" "$HUGE_BUNDLES" 10000
      run_case huge-bundles-sink bundles "$WORK/huge-$HUGE_BUNDLES" "$sink_url" "$HUGE_BUNDLES" ;;
    bundles-sink)
      [ -d "$WORK/carebundle" ] || .tools/carebundle/bin/carebundle generate --profile mixed --count 500 --sex mixed --age-range 30-90 --seed 3 --out "$WORK/carebundle" > /dev/null
      run_case bundles-sink bundles "$WORK/carebundle" "$sink_url" 500 ;;
    storage-costs)
      start_azurite
      FHIRBULK_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:31000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:31001/devstoreaccount1;TableEndpoint=http://127.0.0.1:31002/devstoreaccount1;" \
        target/release/fhir-storage-costs "$(IFS=,; echo "${services[*]}")" 400 | sed 's/^/storage-costs  /'
      stop_azurite "$azurite_pid" ;;
    small-files)
      [ -d "$WORK/small" ] || python3 scripts/gen-data.py small-bundles "$WORK/small" "$SMALL_FILES"
      run_case small-files bundles "$WORK/small" "$sink_url" "$SMALL_FILES" ;;
    ndjson-real)
      start_fhir
      [ -f "$WORK/real.ndjson" ] || python3 scripts/gen-data.py ndjson "$WORK/real.ndjson" 20000 700 loader
      [ -f "$WORK/baseline.ndjson" ] || python3 scripts/gen-data.py ndjson "$WORK/baseline.ndjson" 20000 700 ideal
      # The same server, the same kind of data (other ids, so both runs create): the ceiling.
      echo "    $(python3 scripts/fhir-baseline.py "$fhir_url" "$WORK/baseline.ndjson" 200 4)"
      run_case ndjson-real ndjson "$WORK/real.ndjson" "$fhir_url" 1 ;;
    bundles-real)
      start_fhir
      [ -d "$WORK/carebundle-real" ] || .tools/carebundle/bin/carebundle generate --profile mixed --count 100 --sex mixed --age-range 30-90 --seed 5 --out "$WORK/carebundle-real" > /dev/null
      run_case bundles-real bundles "$WORK/carebundle-real" "$fhir_url" 100 ;;
    zip-bundles-real)
      # The same kind of Bundles as bundles-real (other patients, so both cases create), as one zip.
      start_fhir
      [ -d "$WORK/carebundle-zip" ] || .tools/carebundle/bin/carebundle generate --profile mixed --count 100 --sex mixed --age-range 30-90 --seed 6 --out "$WORK/carebundle-zip" > /dev/null
      [ -f "$WORK/zip-bundles/bundles.zip" ] || zip_bundles "$WORK/zip-bundles/bundles.zip" "$WORK/carebundle-zip"
      run_case zip-bundles-real zip "$WORK/zip-bundles/bundles.zip" "$fhir_url" 1 ;;
    export-real) export_case ;;
    export-e2e) export_e2e_case ;;
    group-memory) group_memory_case ;;
    *) echo "bench.sh: unknown case $c" >&2; exit 1 ;;
  esac
done
[ -n "${BENCH_DIR:-}" ] || rm -rf "$WORK"
