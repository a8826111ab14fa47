#!/usr/bin/env bash
# Starts Azurite (installed by scripts/install.sh) on loopback and waits until it answers.
# Blob, Queue and Table each run in a Node process of their own (azurite-blob, azurite-queue,
# azurite-table), under one supervising shell: Azurite serves every request on one Node thread,
# so one process for all three makes the emulator, not the loader, the limit of an import.
# Env: STATE_DIR (default .stack/azurite; data, log, azurite.pid and services.pid go there),
#      AZURITE_BLOB_PORT/AZURITE_QUEUE_PORT/AZURITE_TABLE_PORT (default 10000/10001/10002),
#      AZURITE_ARGS (extra options for all three, e.g. --inMemoryPersistence; default none).
# Prints the supervisor's PID; killing it (TERM or INT) stops the three services with SIGINT,
# the signal on which Azurite 3.35 saves its queue and table state (on SIGTERM it does not: rows
# and messages of the last seconds were lost, and imports looked stuck). Their own PIDs (for
# CPU accounting) are in $STATE_DIR/services.pid. Stop with: kill "$(cat "$STATE_DIR/azurite.pid")".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FHIR_BULK_TOOLS:-$ROOT/.tools}
STATE_DIR=${STATE_DIR:-$ROOT/.stack/azurite}
BLOB=${AZURITE_BLOB_PORT:-10000}; QUEUE=${AZURITE_QUEUE_PORT:-10001}; TABLE=${AZURITE_TABLE_PORT:-10002}
BIN="$TOOLS/azurite/node_modules/.bin"
[ -x "$BIN/azurite-blob" ] || { echo "azurite-up.sh: Azurite is not installed; run scripts/install.sh" >&2; exit 1; }
mkdir -p "$STATE_DIR/data"
rm -f "$STATE_DIR/services.pid"
read -r -a EXTRA <<< "${AZURITE_ARGS:-}"
LOCATION=(--location "$STATE_DIR/data")
case " ${EXTRA[*]} " in *" --inMemoryPersistence "*) LOCATION=() ;; esac
# --skipApiVersionCheck: the SDK 1.x crates default to service versions newer than 3.35 knows.
# --silent: no access log line per request (the log keeps start-up messages and errors).
COMMON=("${LOCATION[@]}" --disableTelemetry --skipApiVersionCheck --loose --silent "${EXTRA[@]}")
(
  # The supervisor: stops all three when told to, or when any one of them exits.
  services=()
  trap 'kill -INT "${services[@]}" 2>/dev/null; wait; exit 0' TERM INT
  "$BIN/azurite-blob" --blobHost 127.0.0.1 --blobPort "$BLOB" "${COMMON[@]}" & services+=($!)
  "$BIN/azurite-queue" --queueHost 127.0.0.1 --queuePort "$QUEUE" "${COMMON[@]}" & services+=($!)
  "$BIN/azurite-table" --tableHost 127.0.0.1 --tablePort "$TABLE" "${COMMON[@]}" & services+=($!)
  echo "${services[*]}" > "$STATE_DIR/services.pid"
  wait -n || true
  kill -INT "${services[@]}" 2>/dev/null; wait
  exit 1
) > "$STATE_DIR/azurite.log" 2>&1 &
PID=$!
echo "$PID" > "$STATE_DIR/azurite.pid"
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 1 100); do
  if up "$BLOB" && up "$QUEUE" && up "$TABLE"; then
    echo "$PID"; exit 0
  fi
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.2
done
echo "azurite-up.sh: Azurite did not start; its log:" >&2; cat "$STATE_DIR/azurite.log" >&2
kill "$PID" 2>/dev/null || true
exit 1
