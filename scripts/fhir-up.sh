#!/usr/bin/env bash
# Starts the sekmet-fhir R4 server (installed by scripts/install.sh) and waits for /metadata.
# Env: STATE_DIR (default .stack/fhir; settings, SQLite data, log and fhir.pid go there),
#      FHIR_PORT (default 8090), FHIR_VALIDATION (off|warn|strict, default off).
# Prints the PID; the base URL is http://127.0.0.1:$FHIR_PORT/fhir.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FHIR_BULK_TOOLS:-$ROOT/.tools}
STATE_DIR=${STATE_DIR:-$ROOT/.stack/fhir}
PORT=${FHIR_PORT:-8090}
SEKMET="$TOOLS/fhir-server/bin/sekmet"
[ -x "$SEKMET" ] || { echo "fhir-up.sh: sekmet-fhir is not installed; run scripts/install.sh" >&2; exit 1; }
mkdir -p "$STATE_DIR/data"
cat > "$STATE_DIR/settings.yaml" <<YAML
base_url: http://127.0.0.1:$PORT/fhir
host: 127.0.0.1
port: $PORT
data_dir: $STATE_DIR/data
log_inbound: false
simulator: {enabled: false}
validation: {inbound: "${FHIR_VALIDATION:-off}"}
YAML
"$SEKMET" serve -c "$STATE_DIR/settings.yaml" > "$STATE_DIR/fhir.log" 2>&1 &
PID=$!
echo "$PID" > "$STATE_DIR/fhir.pid"
for _ in $(seq 1 150); do
  if curl -sf "http://127.0.0.1:$PORT/fhir/metadata" >/dev/null 2>&1; then echo "$PID"; exit 0; fi
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.2
done
echo "fhir-up.sh: the FHIR server did not start; its log:" >&2; cat "$STATE_DIR/fhir.log" >&2
kill "$PID" 2>/dev/null || true
exit 1
