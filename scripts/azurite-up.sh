#!/usr/bin/env bash
# Starts Azurite (installed by scripts/install.sh) on loopback and waits until it answers.
# Env: STATE_DIR (default .stack/azurite; data, log and azurite.pid go there),
#      AZURITE_BLOB_PORT/AZURITE_QUEUE_PORT/AZURITE_TABLE_PORT (default 10000/10001/10002),
#      AZURITE_ARGS (extra Azurite options, e.g. --inMemoryPersistence; default none).
# Prints the PID. Stop it with: kill "$(cat "$STATE_DIR/azurite.pid")".
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FHIR_BULK_TOOLS:-$ROOT/.tools}
STATE_DIR=${STATE_DIR:-$ROOT/.stack/azurite}
BLOB=${AZURITE_BLOB_PORT:-10000}; QUEUE=${AZURITE_QUEUE_PORT:-10001}; TABLE=${AZURITE_TABLE_PORT:-10002}
AZURITE="$TOOLS/azurite/node_modules/.bin/azurite"
[ -x "$AZURITE" ] || { echo "azurite-up.sh: Azurite is not installed; run scripts/install.sh" >&2; exit 1; }
mkdir -p "$STATE_DIR/data"
read -r -a EXTRA <<< "${AZURITE_ARGS:-}"
LOCATION=(--location "$STATE_DIR/data")
case " ${EXTRA[*]} " in *" --inMemoryPersistence "*) LOCATION=() ;; esac
# --skipApiVersionCheck: the SDK 1.x crates default to service versions newer than 3.35 knows.
"$AZURITE" --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 \
  --blobPort "$BLOB" --queuePort "$QUEUE" --tablePort "$TABLE" \
  "${LOCATION[@]}" --disableTelemetry --skipApiVersionCheck --loose "${EXTRA[@]}" \
  > "$STATE_DIR/azurite.log" 2>&1 &
PID=$!
echo "$PID" > "$STATE_DIR/azurite.pid"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$TABLE") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$BLOB") 2>/dev/null; then
    echo "$PID"; exit 0
  fi
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.2
done
echo "azurite-up.sh: Azurite did not start; its log:" >&2; cat "$STATE_DIR/azurite.log" >&2
kill "$PID" 2>/dev/null || true
exit 1
