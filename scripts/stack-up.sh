#!/usr/bin/env bash
# Starts the local stack on its standard ports and leaves it running:
#   Azurite (blob 10000, queue 10001, table 10002), the sekmet FHIR server
#   (http://127.0.0.1:8090/fhir) and `handler serve` (http://127.0.0.1:7071).
# State, logs and PID files live in .stack/. Stop with scripts/stack-down.sh.
# The handler asks for a key on every route but /health: FHIRBULK_API_KEYS if set, else one
# made here and kept in .stack/api-key (send it as x-functions-key or ?code=).
# Env: HANDLER (path of the handler binary; default target/release/handler).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK="$ROOT/.stack"
HANDLER=${HANDLER:-$ROOT/target/release/handler}
mkdir -p "$STACK"
for f in "$STACK"/*.pid; do
  [ -e "$f" ] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then
    echo "stack-up.sh: $(basename "$f" .pid) is already running (PID $(cat "$f")); run scripts/stack-down.sh first" >&2
    exit 1
  fi
done
[ -x "$HANDLER" ] || { echo "stack-up.sh: $HANDLER not built; run: cargo build --release" >&2; exit 1; }

STATE_DIR="$STACK/azurite" "$ROOT/scripts/azurite-up.sh" > "$STACK/azurite.pid"
STATE_DIR="$STACK/fhir" FHIR_PORT=8090 "$ROOT/scripts/fhir-up.sh" > "$STACK/fhir.pid"

export FHIRBULK_STORAGE_CONNECTION_STRING=${FHIRBULK_STORAGE_CONNECTION_STRING:-UseDevelopmentStorage=true}
export FHIRBULK_FHIR_URL=${FHIRBULK_FHIR_URL:-http://127.0.0.1:8090/fhir}
export FUNCTIONS_CUSTOMHANDLER_PORT=${FUNCTIONS_CUSTOMHANDLER_PORT:-7071}
if [ -z "${FHIRBULK_API_KEYS:-}" ]; then
  [ -s "$STACK/api-key" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(24))' > "$STACK/api-key")
  FHIRBULK_API_KEYS=$(cat "$STACK/api-key")
fi
export FHIRBULK_API_KEYS
"$HANDLER" serve > "$STACK/handler.log" 2>&1 &
echo $! > "$STACK/handler.pid"
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT/health" >/dev/null 2>&1 && break
  kill -0 "$(cat "$STACK/handler.pid")" 2>/dev/null || { cat "$STACK/handler.log" >&2; exit 1; }
  sleep 0.2
done
cat <<EOT
Stack running:
  FHIR server   $FHIRBULK_FHIR_URL
  handler       http://127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT/imports   (log: .stack/handler.log)
                key: curl -H "x-functions-key: \$(cat .stack/api-key)" ...
  Azurite       UseDevelopmentStorage=true (blob 10000, queue 10001, table 10002)
Upload:  FHIRBULK_STORAGE_CONNECTION_STRING=UseDevelopmentStorage=true FHIRBULK_FHIR_URL=$FHIRBULK_FHIR_URL $HANDLER upload ndjson FILE
Stop:    scripts/stack-down.sh
EOT
